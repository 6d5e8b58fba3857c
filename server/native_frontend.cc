// rnnserve native front-end (`rnnserve serve --frontend native`, server/native_frontend.py).
//
// A C++ gRPC server that owns the public port and carries the per-call cost that grpc.aio
// pays in Python (HTTP/2, framing, completion queues; docs/architecture.md §5). It holds no
// model, no validation and no state: every call is handed, as bytes, to the Python server
// process that started it, which answers exactly as it does without this front-end.
//
// Two routes, chosen by the method's path:
// - calls:  the unary methods named with --unary (the inference hot path) and the
//   bidirectional ones named with --stream. Messages travel over one Unix stream socket
//   (--calls) in frames; the Python side runs the same servicer method and sends back the
//   responses and the status (and, for a stream, its trailing metadata).
// - proxy:  every other method (health, reflection, ...) is forwarded unchanged
//   to the Python grpc.aio server listening on a private Unix socket (--backend): the same
//   messages in order, the caller's metadata and deadline, the backend's initial and
//   trailing metadata and status, cancellation in both directions.
// The caller's peer address travels with each call (a frame field, or the metadata key
// `rnnserve-peer`, which a caller can never set: it is replaced on every proxied call);
// so does its `authorization` metadata, for the server's bearer-token check. A method on
// the calls route sees no other metadata.
//
// Frames on --calls, little-endian (one method numbering for --unary and --stream, in
// flag order):
//   to Python:   u32 size | u8 kind | u64 id | u16 method | u16 peer size |
//                u16 authorization size | peer | authorization | body
//                kind 1 call (body: the request), 2 cancel, 3 stream opened, 4 stream
//                message (body: the message), 5 stream half-closed by the caller,
//                6 stream responses written (how many: the method field)
//   from Python: u32 size | u64 id | u8 code | u32 message size | message | body
//                code 0-16: the status (unary body: the response; stream body: trailing
//                metadata as u16 key size | key | u32 value size | value, repeated);
//                128: a stream response (body); 129: read the stream's next message
//
// Invariants:
// - Every call is finished exactly once: by its reply, by its cancellation, or with
//   UNAVAILABLE when the Python process goes away (this process then removes the server's
//   sockets and their directory, which a SIGKILLed server leaves behind, and exits 1).
// - A pending call is owned by the `pending` map: whoever removes it finishes it.
// - A stream has at most one read in flight and reads only when Python asks (so HTTP/2
//   flow control pushes back on a caller that sends faster than the server answers);
//   its responses are written in order, one at a time, and its status only after the last.
// - Python holds at most --stream-window responses of a stream unwritten. Writes are
//   acknowledged only when Python may be waiting (that many unacknowledged), so a stream
//   whose caller keeps up costs no acknowledgement frames.
// - SIGTERM from the Python server (its parent; sent once it has ended its streams): stop
//   accepting calls, let those in flight finish, exit 0 once all are done or --grace
//   seconds have passed. Any other SIGTERM or SIGINT (a terminal's Ctrl-C, `kill -- -PGID`,
//   a supervisor signalling every process) is the server's to act on and is ignored here,
//   so the port keeps taking calls while the server ends its streams first.
// - The public port is a listening socket the Python process made and keeps (--listen-fd):
//   while this process is restarted, connections wait in its backlog instead of being
//   refused. This process accepts them (one thread) and hands each to grpc.
// - stdout carries one line, `listening <port>`, once the server takes connections.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/byte_buffer.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using grpc::ByteBuffer;
using grpc::Status;
using grpc::StatusCode;

const char kPeerKey[] = "rnnserve-peer";

std::string Flatten(const ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const auto& slice : slices) out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return out;
}

// A message's bytes (copied) as grpc sends them.
ByteBuffer Buffer(const char* body, size_t size) {
  grpc::Slice slice(body, size);
  return ByteBuffer(&slice, 1);
}

template <typename T>
void Put(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(value));  // x86-64: little-endian
}

template <typename T>
T Get(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// Frame kinds to Python, and the codes Python uses for a stream's responses and reads.
enum : uint8_t { kCall = 1, kCancel = 2, kOpen = 3, kMessage = 4, kHalfClose = 5, kWrote = 6 };
enum : uint8_t { kResponse = 128, kRead = 129 };

std::string Frame(uint8_t kind, uint64_t id, uint16_t method = 0, const std::string& peer = "",
                  const std::string& authorization = "", const char* body = nullptr,
                  size_t body_size = 0) {
  std::string frame;
  size_t size = 15 + peer.size() + authorization.size() + body_size;
  frame.reserve(4 + size);
  Put<uint32_t>(&frame, static_cast<uint32_t>(size));
  Put<uint8_t>(&frame, kind);
  Put<uint64_t>(&frame, id);
  Put<uint16_t>(&frame, method);
  Put<uint16_t>(&frame, static_cast<uint16_t>(peer.size()));
  Put<uint16_t>(&frame, static_cast<uint16_t>(authorization.size()));
  frame.append(peer);
  frame.append(authorization);
  if (body_size > 0) frame.append(body, body_size);
  return frame;
}

class UnaryCall;
class StreamCall;

// The server's socket paths (--calls, --backend) and its pid (this process's parent). A
// front-end that outlives its server (SIGKILLed: no chance to clean up) removes them and
// their directory on its way out; while the server lives (it only closed the socket) they
// stay, for the front-end it starts next.
std::vector<std::string> g_server_sockets;
pid_t g_server_pid = 0;

void RemoveSocketsOfDeadServer() {
  // A dying process closes its sockets before its children are re-parented: give it 1 s.
  for (int wait = 0; getppid() == g_server_pid; ++wait) {
    if (wait == 100) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const auto& path : g_server_sockets) unlink(path.c_str());
  const std::string& calls = g_server_sockets.front();   // set before the link starts
  rmdir(calls.substr(0, calls.rfind('/')).c_str());      // only once it is empty
}

// The --calls socket: frames are written by the threads that make them; one reader thread
// takes the replies.
class CallsLink {
 public:
  explicit CallsLink(int fd) : fd_(fd) {}

  void Start() {
    reader_ = std::thread([this] { ReadLoop(); });
    reader_.detach();
  }

  // Registers `call` and queues its request; false when the Python side is gone.
  bool Submit(UnaryCall* call, uint16_t method, const std::string& peer,
              const std::string& authorization, const std::string& body);
  // Removes `id` if still pending (then the caller finishes it) and tells Python to cancel.
  bool Cancel(uint64_t id);
  // Registers a stream: its id, or 0 when Python is gone. Then Opened tells Python.
  uint64_t Register(std::shared_ptr<StreamCall> stream);
  void Opened(uint64_t id, uint16_t method, const std::string& peer,
              const std::string& authorization);
  // Unregisters a stream (its OnDone): later frames for it are dropped.
  void Forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    streams_.erase(id);
  }
  // A stream event for Python (kMessage, kHalfClose, kWrote with a count, kCancel).
  void Notify(uint8_t kind, uint64_t id, uint16_t count = 0, const std::string& body = "") {
    Send(Frame(kind, id, count, "", "", body.data(), body.size()));
  }

 private:
  // Writes one frame from the calling thread. A thread per write costs a wake-up per call
  // (measured: ~15 µs of CPU per request); under load the Python side reads many frames
  // per wake-up anyway, as they pile up in the socket buffer.
  void Send(const std::string& frame) {
    std::lock_guard<std::mutex> lock(out_mu_);
    const char* p = frame.data();
    size_t left = frame.size();
    while (left > 0) {
      ssize_t n = ::send(fd_, p, left, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;                        // the reader sees the closed socket and fails all
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  void ReadLoop();
  void FailAll();

  int fd_;
  std::mutex out_mu_;                  // one frame at a time on the socket
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, UnaryCall*> pending_;
  std::unordered_map<uint64_t, std::shared_ptr<StreamCall>> streams_;
  uint64_t next_id_ = 1;
  bool closed_ = false;
  std::thread reader_;
};

class UnaryCall : public grpc::ServerGenericBidiReactor {
 public:
  UnaryCall(CallsLink* link, uint16_t method, std::string peer, std::string authorization)
      : link_(link), method_(method), peer_(std::move(peer)),
        authorization_(std::move(authorization)) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(Status(StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      return;
    }
    if (!link_->Submit(this, method_, peer_, authorization_, Flatten(request_))) {
      Finish(Status(StatusCode::UNAVAILABLE, "the server is restarting; retry"));
    }
  }

  void OnCancel() override {
    uint64_t id = id_.load();
    if (id != 0 && link_->Cancel(id)) Finish(Status(StatusCode::CANCELLED, "cancelled by the client"));
  }

  void OnDone() override { delete this; }

  // Called by the link's reader thread once the call is removed from `pending`.
  void Answer(uint8_t code, std::string message, const char* body, size_t size) {
    if (code == 0) {
      response_ = Buffer(body, size);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), Status::OK);
    } else {
      Finish(Status(static_cast<StatusCode>(code), std::move(message)));
    }
  }

  std::atomic<uint64_t> id_{0};

 private:
  CallsLink* link_;
  uint16_t method_;
  std::string peer_, authorization_;
  ByteBuffer request_, response_;
};

// One bidirectional call on the calls route. Python drives it: it asks for each message
// (kRead), sends the responses (kResponse) and finally the status with trailing metadata.
// Reads and writes may be started with `mu_` held (grpc never runs their reactions inline,
// as ProxyCall relies on too); Finish is called from the reader thread with `mu_` released,
// since OnDone may run inside it.
// Lifetime: shared by the link's `streams_` map (for the reader thread) and by itself
// (`self_`, for grpc) until OnDone.
class StreamCall : public grpc::ServerGenericBidiReactor {
 public:
  static void Start(CallsLink* link, grpc::GenericCallbackServerContext* context,
                    uint16_t method, const std::string& authorization, uint64_t window,
                    grpc::ServerGenericBidiReactor** reactor) {
    auto stream = std::shared_ptr<StreamCall>(new StreamCall(link, context, window));
    stream->self_ = stream;
    *reactor = stream.get();
    uint64_t id = link->Register(stream);
    if (id == 0) {
      stream->finished_ = true;
      stream->Finish(Status(StatusCode::UNAVAILABLE, "the server is restarting; retry"));
      return;
    }
    stream->id_ = id;                      // before Python hears of it: no reaction yet
    link->Opened(id, method, context->peer(), authorization);
  }

  // -- from Python (the link's reader thread) --
  void Read() {
    std::lock_guard<std::mutex> lock(mu_);   // a read's reaction is never run inline
    if (read_closed_ || finish_wanted_ || finished_) return;
    StartRead(&request_);
  }

  void Write(const char* body, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_wanted_) return;
      if (write_failed_) {                 // the caller is gone: let Python move on
        link_->Notify(kWrote, id_, 1);
        return;
      }
      ++received_;
      if (writing_) {
        queue_.emplace_back(body, size);
        return;
      }
      writing_ = true;
      response_ = Buffer(body, size);
    }
    StartWrite(&response_);
  }

  void End(Status status, std::vector<std::pair<std::string, std::string>> trailers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || finish_wanted_) return;
      for (auto& [key, value] : trailers) context_->AddTrailingMetadata(key, value);
      status_ = status;
      finish_wanted_ = true;
      if (writing_) return;                // OnWriteDone finishes after the last write
      finished_ = true;
    }
    Finish(std::move(status));
  }

  // -- grpc's reactions --
  void OnReadDone(bool ok) override {
    std::string message;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) read_closed_ = true;
      else message = Flatten(request_);
    }
    link_->Notify(ok ? kMessage : kHalfClose, id_, 0, message);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    ++written_;
    if (!ok) {                             // no later write can succeed
      write_failed_ = true;
      written_ += queue_.size();
      queue_.clear();
    }
    if (received_ - acknowledged_ >= window_ || write_failed_) {
      link_->Notify(kWrote, id_, static_cast<uint16_t>(written_ - acknowledged_));
      acknowledged_ = written_;
    }
    if (!queue_.empty()) {
      writing_ = true;
      response_ = Buffer(queue_.front().data(), queue_.front().size());
      queue_.pop_front();
      StartWrite(&response_);              // a reaction: grpc does not run reactions inline here
      return;
    }
    if (finish_wanted_ && !finished_) FinishLocked(status_);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (id_ != 0 && !finished_ && !finish_wanted_) link_->Notify(kCancel, id_);
    if (finished_ || finish_wanted_) return;
    status_ = Status(StatusCode::CANCELLED, "cancelled by the client");
    finish_wanted_ = true;
    if (!writing_) FinishLocked(status_);
  }

  // Last of all reactions; may run inside Finish, so it takes no lock of this call.
  void OnDone() override {
    link_->Forget(id_);
    std::shared_ptr<StreamCall> self = std::move(self_);
  }                                        // deleted here unless the reader holds it

 private:
  StreamCall(CallsLink* link, grpc::GenericCallbackServerContext* context, uint64_t window)
      : link_(link), context_(context), window_(window) {}

  // In a reaction, with mu_ held and no write in flight.
  void FinishLocked(Status status) {
    finished_ = true;
    Finish(std::move(status));
  }

  CallsLink* link_;
  grpc::GenericCallbackServerContext* context_;
  std::shared_ptr<StreamCall> self_;
  std::mutex mu_;
  uint64_t id_ = 0;
  const uint64_t window_;
  uint64_t received_ = 0, written_ = 0, acknowledged_ = 0;   // responses
  ByteBuffer request_, response_;
  std::deque<std::string> queue_;          // responses waiting for the one being written
  bool writing_ = false, read_closed_ = false, write_failed_ = false;
  bool finish_wanted_ = false, finished_ = false;
  Status status_;
};

uint64_t CallsLink::Register(std::shared_ptr<StreamCall> stream) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  if (closed_) return 0;
  uint64_t id = next_id_++;
  streams_[id] = std::move(stream);
  return id;
}

void CallsLink::Opened(uint64_t id, uint16_t method, const std::string& peer,
                       const std::string& authorization) {
  Send(Frame(kOpen, id, method, peer, authorization));
}

bool CallsLink::Submit(UnaryCall* call, uint16_t method, const std::string& peer,
                       const std::string& authorization, const std::string& body) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (closed_) return false;
    id = next_id_++;
    call->id_.store(id);
    pending_[id] = call;
  }
  Send(Frame(kCall, id, method, peer, authorization, body.data(), body.size()));
  return true;
}

bool CallsLink::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (pending_.erase(id) == 0) return false;
  }
  Send(Frame(kCancel, id));
  return true;
}

// A stream's trailing metadata from its status frame: (u16 key size | key | u32 value size |
// value)*; a truncated entry ends the list.
std::vector<std::pair<std::string, std::string>> Trailers(const char* p, size_t size) {
  std::vector<std::pair<std::string, std::string>> trailers;
  size_t at = 0;
  while (size - at >= 2) {
    size_t key_size = Get<uint16_t>(p + at);
    if (size - at - 2 < key_size + 4) break;
    std::string key(p + at + 2, key_size);
    size_t value_size = Get<uint32_t>(p + at + 2 + key_size);
    at += 6 + key_size;
    if (size - at < value_size) break;
    trailers.emplace_back(std::move(key), std::string(p + at, value_size));
    at += value_size;
  }
  return trailers;
}

void CallsLink::ReadLoop() {
  std::string buffer;
  std::vector<char> chunk(1 << 16);
  for (;;) {
    ssize_t n = ::recv(fd_, chunk.data(), chunk.size(), 0);
    if (n == 0 || (n < 0 && errno != EINTR)) {
      FailAll();
      return;
    }
    if (n < 0) continue;
    buffer.append(chunk.data(), static_cast<size_t>(n));
    size_t offset = 0;
    while (buffer.size() - offset >= 4) {
      uint32_t size = Get<uint32_t>(buffer.data() + offset);
      if (buffer.size() - offset - 4 < size) break;
      const char* p = buffer.data() + offset + 4;
      uint64_t id = Get<uint64_t>(p);
      uint8_t code = Get<uint8_t>(p + 8);
      uint32_t message_size = Get<uint32_t>(p + 9);
      std::string message(p + 13, message_size);
      const char* body = p + 13 + message_size;
      size_t body_size = size - 13 - message_size;
      UnaryCall* call = nullptr;
      std::shared_ptr<StreamCall> stream;
      {
        std::lock_guard<std::mutex> lock(calls_mu_);
        auto it = pending_.find(id);
        if (it != pending_.end()) {
          call = it->second;
          pending_.erase(it);
        } else if (auto found = streams_.find(id); found != streams_.end()) {
          stream = found->second;
        }
      }
      if (call != nullptr) {
        call->Answer(code, std::move(message), body, body_size);
      } else if (stream != nullptr) {
        if (code == kResponse) stream->Write(body, body_size);
        else if (code == kRead) stream->Read();
        else stream->End(Status(static_cast<StatusCode>(code), std::move(message)),
                         Trailers(body, body_size));
      }
      offset += 4 + size;
    }
    buffer.erase(0, offset);
  }
}

void CallsLink::FailAll() {
  std::unordered_map<uint64_t, UnaryCall*> calls;
  std::unordered_map<uint64_t, std::shared_ptr<StreamCall>> streams;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (closed_) return;
    closed_ = true;
    calls.swap(pending_);
    streams.swap(streams_);
  }
  for (auto& [id, call] : calls) call->Answer(14, "the server process went away", nullptr, 0);
  for (auto& [id, stream] : streams) {
    stream->End(Status(StatusCode::UNAVAILABLE, "the server process went away"), {});
  }
  std::fprintf(stderr, "rnnserve-frontend: the server process closed the calls socket\n");
  std::fflush(stderr);
  RemoveSocketsOfDeadServer();
  std::_Exit(1);
}

// One proxied call: a server reactor (the caller) joined to a client reactor (the backend).
class ProxyCall : public grpc::ServerGenericBidiReactor {
 public:
  ProxyCall(grpc::GenericStub* stub, grpc::GenericCallbackServerContext* context)
      : server_context_(context), backend_(this) {
    for (const auto& [key, value] : context->client_metadata()) {
      std::string name(key.data(), key.size());
      if (name == kPeerKey || name == "user-agent" || name.rfind("grpc-", 0) == 0) continue;
      client_context_.AddMetadata(name, std::string(value.data(), value.size()));
    }
    client_context_.AddMetadata(kPeerKey, context->peer());
    client_context_.set_deadline(context->raw_deadline());
    stub->PrepareBidiStreamingCall(&client_context_, context->method(), grpc::StubOptions(),
                                   &backend_);
    backend_.StartRead(&from_backend_);
    // Operations on the backend are started from the caller's reactions, so two holds keep
    // it alive: the write hold (until the caller half-closes or the backend ends) and the
    // read hold (until the backend's last read has completed).
    backend_.AddMultipleHolds(2);
    backend_.StartCall();
    StartRead(&from_caller_);
  }

  // caller -> backend
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (hold_released_) return;        // the backend has ended the call: drop the rest
    if (ok) {
      backend_.StartWrite(&from_caller_);
    } else {
      backend_.StartWritesDone();
      ReleaseHold();
    }
  }
  void OnCancel() override { client_context_.TryCancel(); }
  // backend -> caller, one message at a time; reads go on until the backend's end, even
  // after a failed write (the call is cancelled then), so the read hold is always released.
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) client_context_.TryCancel();
    backend_.StartRead(&from_backend_);
  }
  void OnDone() override { Release(); }

 private:
  class Backend : public grpc::ClientBidiReactor<ByteBuffer, ByteBuffer> {
   public:
    explicit Backend(ProxyCall* call) : call_(call) {}
    void OnReadInitialMetadataDone(bool ok) override {
      std::lock_guard<std::mutex> lock(call_->mu_);
      if (!ok || call_->wrote_ || call_->reading_done_) return;   // too late to add any
      for (const auto& [key, value] : call_->client_context_.GetServerInitialMetadata()) {
        call_->server_context_->AddInitialMetadata(std::string(key.data(), key.size()),
                                                   std::string(value.data(), value.size()));
      }
    }
    void OnReadDone(bool ok) override {
      std::lock_guard<std::mutex> lock(call_->mu_);
      if (ok) {
        call_->writing_ = call_->wrote_ = true;
        call_->StartWrite(&call_->from_backend_);
      } else {                         // the backend has sent its status: stop forwarding
        call_->reading_done_ = true;
        call_->ReleaseHold();
        call_->backend_.RemoveHold();  // the read hold
        call_->MaybeFinish();
      }
    }
    void OnWriteDone(bool ok) override {
      std::lock_guard<std::mutex> lock(call_->mu_);
      if (ok && !call_->hold_released_) call_->StartRead(&call_->from_caller_);
    }
    void OnWritesDoneDone(bool) override {}
    void OnDone(const Status& status) override {
      {
        std::lock_guard<std::mutex> lock(call_->mu_);
        call_->status_ = status;
        call_->backend_done_ = true;
        call_->MaybeFinish();
      }
      call_->Release();
    }

   private:
    ProxyCall* call_;
  };

  // With mu_ held: finish the caller's call once the backend is done and no write is pending.
  void MaybeFinish() {
    if (finished_ || !backend_done_ || writing_) return;
    finished_ = true;
    for (const auto& [key, value] : client_context_.GetServerTrailingMetadata()) {
      server_context_->AddTrailingMetadata(std::string(key.data(), key.size()),
                                           std::string(value.data(), value.size()));
    }
    Finish(status_);
  }

  // With mu_ held: no further write to the backend will be started (the write hold).
  void ReleaseHold() {
    if (hold_released_) return;
    hold_released_ = true;
    backend_.RemoveHold();
  }

  void Release() {
    if (references_.fetch_sub(1) == 1) delete this;
  }

  friend class Backend;
  grpc::GenericCallbackServerContext* server_context_;
  grpc::ClientContext client_context_;
  Backend backend_;
  ByteBuffer from_caller_, from_backend_;
  std::mutex mu_;
  bool writing_ = false, reading_done_ = false, backend_done_ = false, finished_ = false,
       hold_released_ = false, wrote_ = false;
  Status status_;
  std::atomic<int> references_{2};     // the caller's OnDone and the backend's OnDone
};

// A method on the calls route: its number in frames, and whether it is a stream.
struct Route {
  uint16_t method;
  bool stream;
};

class Router : public grpc::CallbackGenericService {
 public:
  Router(CallsLink* link, std::unordered_map<std::string, Route> routes,
         std::shared_ptr<grpc::Channel> backend, uint64_t window)
      : link_(link), routes_(std::move(routes)), stub_(std::move(backend)), window_(window) {}

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    auto it = routes_.find(context->method());
    if (it == routes_.end()) return new ProxyCall(&stub_, context);
    std::string authorization;
    auto header = context->client_metadata().find("authorization");
    if (header != context->client_metadata().end() && header->second.size() < 65536) {
      authorization.assign(header->second.data(), header->second.size());
    }
    if (!it->second.stream) {
      return new UnaryCall(link_, it->second.method, context->peer(), std::move(authorization));
    }
    grpc::ServerGenericBidiReactor* reactor = nullptr;
    StreamCall::Start(link_, context, it->second.method, authorization, window_, &reactor);
    return reactor;
  }

 private:
  CallsLink* link_;
  std::unordered_map<std::string, Route> routes_;
  grpc::GenericStub stub_;
  uint64_t window_;
};

int ConnectUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof(address.sun_path)) return -1;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return -1;
  return fd;
}

// Plaintext, TLS (--tls-cert/--tls-key) or mutual TLS (and --tls-client-ca). The files are
// re-read every second, so a rotated certificate (a Secret volume update) reaches new
// connections without a restart, as with the Python front-end.
std::shared_ptr<grpc::ServerCredentials> Credentials(const std::string& cert,
                                                     const std::string& key,
                                                     const std::string& client_ca) {
  if (cert.empty()) return grpc::InsecureServerCredentials();
  auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      key, cert, client_ca, 1);
  grpc::experimental::TlsServerCredentialsOptions options(files);
  options.watch_identity_key_cert_pairs();
  if (!client_ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// Accepts connections on the inherited listening socket and hands each to grpc, until
// `wake_fd` becomes readable (shutdown); then closes this process's copy of the socket.
void AcceptLoop(int listen_fd, int wake_fd,
                grpc::experimental::ExternalConnectionAcceptor* acceptor) {
  fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
  pollfd watched[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  while (true) {
    if (poll(watched, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (watched[1].revents != 0) break;
    if ((watched[0].revents & ~POLLIN) != 0) {   // never serve on without taking connections:
      std::fprintf(stderr, "rnnserve-frontend: the listening socket failed (poll 0x%x)\n",
                   watched[0].revents);               // exit, the server logs and restarts
      std::fflush(stderr);
      std::_Exit(4);
    }
    if ((watched[0].revents & POLLIN) == 0) continue;
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));   // let calls finish
      }
      continue;   // EAGAIN (another accept won), ECONNABORTED, EINTR, ...
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters connection;
    connection.listener_fd = listen_fd;
    connection.fd = fd;                  // grpc owns it from here
    acceptor->HandleNewConnection(&connection);
  }
  close(listen_fd);
}

int Usage() {
  std::fprintf(stderr,
               "usage: rnnserve-frontend --listen-fd FD --backend UNIX_PATH --calls UNIX_PATH\n"
               "       [--unary /pkg.Service/Method]... [--stream /pkg.Service/Method]...\n"
               "       [--stream-window N] [--arg grpc.key=INT]... [--grace SECONDS]\n"
               "       [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]\n"
               "Started by `rnnserve serve --frontend native`; not meant to be run by hand.\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend_path, calls_path, tls_cert, tls_key, tls_client_ca;
  int listen_fd = -1;
  std::unordered_map<std::string, Route> routes;
  std::vector<std::pair<std::string, int>> args;
  double grace = 30.0;
  uint64_t window = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--listen-fd") listen_fd = std::atoi(value.c_str());
    else if (flag == "--backend") backend_path = value;
    else if (flag == "--calls") calls_path = value;
    else if (flag == "--unary" || flag == "--stream") {
      routes.emplace(value, Route{static_cast<uint16_t>(routes.size()), flag == "--stream"});
    }
    else if (flag == "--grace") grace = std::atof(value.c_str());
    else if (flag == "--stream-window") window = std::max(1, std::atoi(value.c_str()));
    else if (flag == "--tls-cert") tls_cert = value;
    else if (flag == "--tls-key") tls_key = value;
    else if (flag == "--tls-client-ca") tls_client_ca = value;
    else if (flag == "--arg") {
      auto eq = value.find('=');
      if (eq == std::string::npos) return Usage();
      args.emplace_back(value.substr(0, eq), std::atoi(value.c_str() + eq + 1));
    } else return Usage();
  }
  if (listen_fd < 0 || backend_path.empty() || calls_path.empty() || argc % 2 == 0) return Usage();

  // Signals are taken by one thread (sigwait) so that no grpc thread is interrupted.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  g_server_sockets = {calls_path, backend_path};
  g_server_pid = getppid();
  int calls_fd = ConnectUnix(calls_path);
  if (calls_fd < 0) {
    std::fprintf(stderr, "rnnserve-frontend: cannot connect to %s: %s\n", calls_path.c_str(),
                 std::strerror(errno));
    return 1;
  }
  CallsLink link(calls_fd);
  link.Start();

  grpc::ChannelArguments backend_args;
  backend_args.SetMaxReceiveMessageSize(-1);
  backend_args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel("unix:" + backend_path,
                                           grpc::InsecureChannelCredentials(), backend_args);
  Router router(&link, std::move(routes), channel, window);

  sockaddr_storage bound{};
  socklen_t bound_size = sizeof(bound);
  int listening = 0;
  socklen_t listening_size = sizeof(listening);
  if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&bound), &bound_size) != 0 ||
      getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &listening_size) != 0 ||
      !listening || (bound.ss_family != AF_INET && bound.ss_family != AF_INET6)) {
    std::fprintf(stderr, "rnnserve-frontend: --listen-fd %d is not a listening TCP socket\n",
                 listen_fd);
    return 3;
  }
  int port = ntohs(bound.ss_family == AF_INET
                       ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                       : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);

  grpc::ServerBuilder builder;
  auto acceptor = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
      Credentials(tls_cert, tls_key, tls_client_ca));
  for (const auto& [key, value] : args) {
    if (key == "grpc.max_receive_message_length") builder.SetMaxReceiveMessageSize(value);
    else if (key == "grpc.max_send_message_length") builder.SetMaxSendMessageSize(value);
    else builder.AddChannelArgument(key, value);
  }
  builder.RegisterCallbackGenericService(&router);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  int wake[2];
  if (!server || pipe2(wake, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "rnnserve-frontend: cannot start the server\n");
    return 3;
  }
  std::thread accepting(AcceptLoop, listen_fd, wake[0], acceptor.get());
  std::printf("listening %d\n", port);
  std::fflush(stdout);

  siginfo_t signal_info{};   // only the server's SIGTERM stops this process (see top)
  while (sigwaitinfo(&signals, &signal_info) < 0 || signal_info.si_signo != SIGTERM ||
         signal_info.si_pid != g_server_pid) {
  }
  if (write(wake[1], "x", 1) == 1) accepting.join();   // no new connections from here on
  auto deadline = std::chrono::system_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(grace * 1000));
  server->Shutdown(deadline);
  server->Wait();
  std::fflush(stderr);
  std::_Exit(0);   // the link's threads are blocked in recv/wait: no orderly join needed
}
