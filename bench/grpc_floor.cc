// The floor of grpc's C++ callback server: every call answered with a fixed 5-byte message,
// no work at all. bench/grpc_floor.py compiles it (the way the native front-end is built)
// and measures it beside the Python servers. Usage: grpc_floor PORT
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <string>

namespace {

class Answer : public grpc::ServerGenericBidiReactor {
 public:
  Answer() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      return;
    }
    grpc::Slice slice("\x0a\x03" "abc", 5);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_, response_;
};

class Everything : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new Answer();
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  Everything service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(&service);
  builder.BuildAndStart()->Wait();
}
