#include "daemon/services.h"

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/convert.h"
#include "daemon/status_convert.h"
#include "fcvm/v1/wire.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"
#include "lib/base/status.h"
#include "lib/storage/snapshot_store.h"

namespace fcvm::daemon {
namespace {

namespace v1 = fcvm::v1;

const absl::Status& StoppingError() {
  static const absl::Status* const kStatus =
      new absl::Status(absl::UnavailableError("fcvmd is shutting down"));
  return *kStatus;
}

// The request's identity for the idempotency cache: map fields make the
// default serialization order unstable, so it is made deterministic.
std::string Fingerprint(const google::protobuf::Message& message) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return out;
}

// Marks an answer as fcvmd's own (trailing metadata), so that fcvmctl can
// tell fcvmd's UNAVAILABLE ("shutting down") from not reaching fcvmd at all.
void MarkServed(grpc::CallbackServerContext* context) {
  context->AddTrailingMetadata(v1::kServedByKey, "fcvmd");
}

// Answers a read on the gRPC thread: `work` only takes the Manager's locks.
template <typename Response, typename Work>
grpc::ServerUnaryReactor* AnswerNow(grpc::CallbackServerContext* context, Response* response, Work work) {
  MarkServed(context);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = work(response);
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::Time FromChrono(std::chrono::system_clock::time_point t) {
  if (t >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(t);
}

// A unary call's reactor whose cancellation (the client cancelled, its
// deadline passed, the connection broke) cancels the work posted for it.
class CancellableReactor final : public grpc::ServerUnaryReactor {
 public:
  CancellableReactor(std::shared_ptr<CancelSource> cancel, absl::Time deadline)
      : cancel_(std::move(cancel)), deadline_(deadline) {}
  void OnCancel() override {
    cancel_->Cancel(absl::Now() >= deadline_ ? absl::DeadlineExceededError("deadline exceeded")
                                             : absl::CancelledError("cancelled by the client"));
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<CancelSource> cancel_;
  const absl::Time deadline_;
};

// Runs a mutating rpc on the worker pool, through the idempotency cache when
// the request carries a client_request_id. `work(request, response, cancel)`
// runs on a worker with the request copied (gRPC's copy may be gone by then,
// see calls.h); `cancel` ends when the client gives up or fcvmd stops.
template <typename Request, typename Response, typename Work>
grpc::ServerUnaryReactor* RunOnWorker(const ServiceDeps& deps, const char* method,
                                      grpc::CallbackServerContext* context, const Request* request,
                                      Response* response, Work work) {
  MarkServed(context);
  absl::Time deadline = FromChrono(context->deadline());
  auto cancel = std::make_shared<CancelSource>(deps.shutdown, deadline);
  grpc::ServerUnaryReactor* reactor = new CancellableReactor(cancel, deadline);
  std::shared_ptr<UnaryCall<Response>> call = deps.calls->Begin(reactor, response);
  if (call == nullptr) {
    reactor->Finish(ToGrpcStatus(StoppingError()));
    return reactor;
  }
  // Hands a stored answer to this call.
  auto answer_from = [call](const RequestCache::Result& result) {
    Response stored;
    if (result.status.ok() && !stored.ParseFromString(result.response)) {
      call->Complete(absl::InternalError("stored answer does not parse"), nullptr);
      return;
    }
    call->Complete(result.status, &stored);
  };

  std::string id = request->client_request_id();
  if (!id.empty()) {
    RequestCache::Result result;
    switch (deps.cache->Start(method, id, Fingerprint(*request), answer_from, &result)) {
      case RequestCache::Begin::kRun:
        break;
      case RequestCache::Begin::kDone:
      case RequestCache::Begin::kConflict:
        answer_from(result);
        return reactor;
      case RequestCache::Begin::kWaiting:
        return reactor;
    }
  }

  RequestCache* cache = deps.cache;
  auto run = [call, cache, method, id, work, cancel, copy = Request(*request)]() mutable {
    Response out;
    absl::Status status = work(copy, &out, cancel->token());
    if (!id.empty()) cache->Finish(method, id, {status, status.ok() ? out.SerializeAsString() : ""});
    call->Complete(status, &out);
  };
  auto dropped = [call, cache, method, id] {
    absl::Status status = absl::UnavailableError("fcvmd is shutting down; the request was not started");
    if (!id.empty()) cache->Abandon(method, id, {status, ""});
    call->Complete(status, nullptr);
  };
  if (!deps.pool->Post(std::move(run), dropped)) dropped();
  return reactor;
}

// Paging of a listing sorted oldest first: the token is the last item's
// "<created_at unix ns>/<id>"; an answer holds at most `page_size` items
// (0 or above kMaxPageSize: kMaxPageSize) and stops before kMaxPageBytes.
constexpr uint32_t kMaxPageSize = 1000;
constexpr size_t kMaxPageBytes = 4 << 20;

std::string PageToken(absl::Time created_at, const std::string& id) {
  return absl::StrCat(absl::ToUnixNanos(created_at), "/", id);
}

// True when (created_at, id) comes after the token's item.
absl::StatusOr<std::function<bool(absl::Time, const std::string&)>> AfterToken(const std::string& token) {
  if (token.empty()) return [](absl::Time, const std::string&) { return true; };
  size_t slash = token.find('/');
  int64_t ns = 0;
  if (slash == std::string::npos || !absl::SimpleAtoi(token.substr(0, slash), &ns)) {
    return absl::InvalidArgumentError("page_token is not one this fcvmd gave out");
  }
  absl::Time t = absl::FromUnixNanos(ns);
  std::string id = token.substr(slash + 1);
  return [t, id](absl::Time created_at, const std::string& other) {
    return created_at != t ? created_at > t : other > id;
  };
}

template <typename Proto, typename Item, typename Add>
absl::Status FillPage(const std::vector<Item>& items, uint32_t page_size, const std::string& page_token,
                      Add add, std::string* next_page_token) {
  ASSIGN_OR_RETURN(auto after, AfterToken(page_token));
  uint32_t limit = page_size == 0 || page_size > kMaxPageSize ? kMaxPageSize : page_size;
  uint32_t added = 0;
  size_t bytes = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& item = items[i];
    if (!after(item.created_at, item.id)) continue;
    if (added == limit) {
      *next_page_token = PageToken(items[i - 1].created_at, items[i - 1].id);
      break;
    }
    Proto proto;
    ToProto(item, &proto);
    size_t size = proto.ByteSizeLong() + 8;
    if (added > 0 && bytes + size > kMaxPageBytes) {
      *next_page_token = PageToken(items[i - 1].created_at, items[i - 1].id);
      break;
    }
    bytes += size;
    add(std::move(proto));
    ++added;
  }
  return absl::OkStatus();
}

// One WatchEvents stream. The Sink (shared with the hub) holds the queue and
// decides, under its lock, who writes or finishes next; the gRPC operations
// themselves are started outside the lock. Invariant: the reactor is alive
// while `finished_` is false or a write is in flight (gRPC calls OnDone only
// after Finish, and Finish is only issued when no write is in flight).
class WatchStream final : public grpc::ServerWriteReactor<v1::Event> {
 public:
  WatchStream(std::shared_ptr<EventHub> hub, CallTracker* calls, std::string vm_id, std::string snapshot_id)
      : hub_(std::move(hub)),
        calls_(calls),
        sink_(std::make_shared<Sink>(this, std::move(vm_id), std::move(snapshot_id))) {}

  // Registers with the hub, or ends the stream with `status` when not OK.
  void Start(absl::Status status, std::optional<uint64_t> replay_after) {
    counted_ = calls_->StreamStarted();
    if (!counted_ && status.ok()) status = StoppingError();
    if (!status.ok()) {
      sink_->Close(status);
      return;
    }
    // Headers first: a client may wait for them to know it is subscribed.
    StartSendInitialMetadata();
    if (!hub_->Add(sink_, replay_after)) sink_->Close(StoppingError());
  }

  void OnWriteDone(bool ok) override { sink_->WriteDone(ok); }
  void OnCancel() override { sink_->Close(absl::CancelledError("cancelled by the client")); }
  void OnDone() override {
    sink_->Detach();
    hub_->Remove(sink_.get());
    if (counted_) calls_->StreamDone();
    delete this;
  }

 private:
  class Sink final : public EventSink {
   public:
    Sink(WatchStream* stream, std::string vm_id, std::string snapshot_id)
        : vm_id_(std::move(vm_id)), snapshot_id_(std::move(snapshot_id)), stream_(stream) {}

    void Deliver(const vm::Event& event) override {
      if (!vm_id_.empty() || !snapshot_id_.empty()) {
        bool match = (!vm_id_.empty() && event.vm_id == vm_id_) ||
                     (!snapshot_id_.empty() && event.snapshot_id == snapshot_id_);
        if (!match) return;
      }
      v1::Event proto;
      ToProto(event, &proto);
      Act([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (stream_ == nullptr || finishing_.has_value()) return;
        if (queue_.size() >= kMaxQueuedEvents) {
          queue_.clear();
          finishing_ = absl::ResourceExhaustedError(
              absl::StrCat("event stream fell behind (", kMaxQueuedEvents, " events queued); watch again"));
          return;
        }
        queue_.push_back(std::move(proto));
      });
    }

    void Close(const absl::Status& status) override {
      Act([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (finishing_.has_value()) return;
        queue_.clear();
        finishing_ = status;
      });
    }

    void WriteDone(bool ok) {
      Act([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        writing_ = false;
        if (!ok && !finishing_.has_value()) {
          queue_.clear();
          finishing_ = absl::CancelledError("client went away");
        }
      });
    }

    void Detach() {
      absl::MutexLock lock(&mu_);
      stream_ = nullptr;
    }

   private:
    // Applies `change` under the lock, then starts the next write or the
    // finish, outside it.
    template <typename Change>
    void Act(Change change) {
      WatchStream* stream = nullptr;
      bool write = false;
      absl::Status finish;
      {
        absl::MutexLock lock(&mu_);
        change();
        if (stream_ == nullptr || writing_ || finished_) return;
        if (finishing_.has_value()) {
          finished_ = true;
          finish = *finishing_;
        } else if (!queue_.empty()) {
          current_ = std::move(queue_.front());
          queue_.pop_front();
          writing_ = true;
          write = true;
        } else {
          return;
        }
        stream = stream_;
      }
      if (write) {
        stream->StartWrite(&current_);
      } else {
        stream->Finish(ToGrpcStatus(finish));
      }
    }

    const std::string vm_id_;
    const std::string snapshot_id_;
    absl::Mutex mu_;
    WatchStream* stream_ ABSL_GUARDED_BY(mu_);  // null once OnDone ran
    std::deque<v1::Event> queue_ ABSL_GUARDED_BY(mu_);
    v1::Event current_;  // the event being written; only the writer touches it
    bool writing_ ABSL_GUARDED_BY(mu_) = false;
    bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish issued
    std::optional<absl::Status> finishing_ ABSL_GUARDED_BY(mu_);
  };

  std::shared_ptr<EventHub> hub_;
  CallTracker* const calls_;
  bool counted_ = false;  // set in Start, read in OnDone (which comes after)
  std::shared_ptr<Sink> sink_;
};

}  // namespace

// ---- SystemService ----

grpc::ServerUnaryReactor* SystemServiceImpl::GetVersion(grpc::CallbackServerContext* context,
                                                        const v1::GetVersionRequest* /*request*/,
                                                        v1::GetVersionResponse* response) {
  return AnswerNow(context, response, [&](v1::GetVersionResponse* out) {
    out->set_version(info_.version);
    out->set_firecracker_path(info_.firecracker_path);
    out->set_firecracker_version(info_.firecracker_version);
    out->set_api_version(kApiVersion);
    out->set_isolation(info_.isolation);
    ToProto(info_.started_at, out->mutable_started_at());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* SystemServiceImpl::GetPageServerStats(grpc::CallbackServerContext* context,
                                                                const v1::GetPageServerStatsRequest* request,
                                                                v1::PageServerStats* response) {
  return AnswerNow(context, response, [&](v1::PageServerStats* out) -> absl::Status {
    vm::Manager& manager = *deps_.manager;
    PageServerContext ctx;
    if (!request->vm_ref().empty()) {
      absl::StatusOr<vm::VmInfo> vm = manager.Get(request->vm_ref());
      if (!vm.ok()) return vm.status();
      ctx.vm_id = vm->id;
    }
    uffd::ServerStats stats = manager.PageServerStats();
    int threads = manager.options().page_server_threads;
    ctx.loop_threads =
        static_cast<uint32_t>(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
    ctx.dropped_sessions = deps_.events->dropped_sessions();
    for (const vm::VmInfo& vm : manager.List({})) {
      if (!vm.snapshot_id.empty()) ctx.clones[vm.id] = {vm.snapshot_id, vm.prefetch_policy};
    }
    for (const vm::SnapshotInfo& snap : manager.ListSnapshots({})) {
      ctx.memory_files[storage::SnapshotStore::MemoryPath(snap.path)] = {snap.id, snap.memory_bytes};
    }
    ToProto(stats, ctx, out);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::Event>* SystemServiceImpl::WatchEvents(grpc::CallbackServerContext* context,
                                                                    const v1::WatchEventsRequest* request) {
  MarkServed(context);
  std::string vm_id, snapshot_id;
  absl::Status status;
  if (!request->ref().empty()) {
    // A ref may name a VM, a snapshot, or both (separate namespaces).
    absl::StatusOr<vm::VmInfo> vm = deps_.manager->Get(request->ref());
    if (vm.ok()) vm_id = vm->id;
    absl::StatusOr<vm::SnapshotInfo> snap = deps_.manager->GetSnapshot(request->ref());
    if (snap.ok()) snapshot_id = snap->id;
    if (vm_id.empty() && snapshot_id.empty()) {
      status = absl::NotFoundError(absl::StrCat("no VM or snapshot '", request->ref(), "'"));
    }
  }
  auto* stream = new WatchStream(deps_.events, deps_.calls, std::move(vm_id), std::move(snapshot_id));
  std::optional<uint64_t> replay;
  if (request->from_backlog()) replay = request->after_sequence();
  stream->Start(status, replay);
  return stream;
}

// ---- VmService ----

grpc::ServerUnaryReactor* VmServiceImpl::RunVm(grpc::CallbackServerContext* context,
                                               const v1::RunVmRequest* request, v1::Vm* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(
      deps_, "RunVm", context, request, response,
      [manager](const v1::RunVmRequest& req, v1::Vm* out, const CancelToken& cancel) -> absl::Status {
        absl::StatusOr<vm::RunRequest> run = FromProto(req);
        if (!run.ok()) return run.status();
        absl::StatusOr<vm::VmInfo> vm = manager->Run(*run, cancel);
        if (!vm.ok()) return vm.status();
        ToProto(*vm, out);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* VmServiceImpl::GetVm(grpc::CallbackServerContext* context,
                                               const v1::GetVmRequest* request, v1::Vm* response) {
  return AnswerNow(context, response, [&](v1::Vm* out) -> absl::Status {
    if (request->ref().empty()) return absl::InvalidArgumentError("ref is required");
    absl::StatusOr<UsageWanted> usage = FromProto(request->usage(), v1::USAGE_DETAIL_FULL);
    if (!usage.ok()) return usage.status();
    absl::StatusOr<vm::VmInfo> vm = deps_.manager->Get(request->ref());
    if (!vm.ok()) return vm.status();
    ToProto(*vm, out);
    if (*usage != UsageWanted::kNone) {
      std::map<std::string, vm::VmUsage> u = deps_.manager->Usage({vm->id}, *usage == UsageWanted::kWithPss);
      if (auto it = u.find(vm->id); it != u.end()) ToProto(it->second, out->mutable_usage());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VmServiceImpl::ListVms(grpc::CallbackServerContext* context,
                                                 const v1::ListVmsRequest* request,
                                                 v1::ListVmsResponse* response) {
  return AnswerNow(context, response, [&](v1::ListVmsResponse* out) -> absl::Status {
    absl::StatusOr<vm::ListFilter> filter = FromProto(*request);
    if (!filter.ok()) return filter.status();
    absl::StatusOr<UsageWanted> usage = FromProto(request->usage(), v1::USAGE_DETAIL_BASIC);
    if (!usage.ok()) return usage.status();
    absl::Status st = FillPage<v1::Vm>(
        deps_.manager->List(*filter), request->page_size(), request->page_token(),
        [out](v1::Vm&& vm) { out->add_vms()->Swap(&vm); }, out->mutable_next_page_token());
    if (!st.ok() || *usage == UsageWanted::kNone) return st;
    // Only the VMs of this page.
    std::vector<std::string> ids;
    ids.reserve(static_cast<size_t>(out->vms_size()));
    for (const v1::Vm& vm : out->vms()) ids.push_back(vm.id());
    std::map<std::string, vm::VmUsage> u = deps_.manager->Usage(ids, *usage == UsageWanted::kWithPss);
    for (v1::Vm& vm : *out->mutable_vms()) {
      if (auto it = u.find(vm.id()); it != u.end()) ToProto(it->second, vm.mutable_usage());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* VmServiceImpl::PauseVm(grpc::CallbackServerContext* context,
                                                 const v1::PauseVmRequest* request, v1::Vm* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(
      deps_, "PauseVm", context, request, response,
      [manager](const v1::PauseVmRequest& req, v1::Vm* out, const CancelToken&) -> absl::Status {
        if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
        absl::StatusOr<vm::VmInfo> vm = manager->Pause(req.ref());
        if (!vm.ok()) return vm.status();
        ToProto(*vm, out);
        return absl::OkStatus();
      });
}

// Issue 15: a VM's metadata (MMDS), read from and written to its Firecracker.
grpc::ServerUnaryReactor* VmServiceImpl::GetVmMetadata(grpc::CallbackServerContext* context,
                                                       const v1::GetVmMetadataRequest* request,
                                                       v1::VmMetadata* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "GetVmMetadata", context, request, response,
                     [manager](const v1::GetVmMetadataRequest& req, v1::VmMetadata* out,
                               const CancelToken&) -> absl::Status {
                       if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
                       absl::StatusOr<vm::VmInfo> vm = manager->Get(req.ref());
                       if (!vm.ok()) return vm.status();
                       absl::StatusOr<std::string> doc = manager->GetMetadata(req.ref());
                       if (!doc.ok()) return doc.status();
                       out->set_vm_id(vm->id);
                       out->set_json(*std::move(doc));
                       return absl::OkStatus();
                     });
}

grpc::ServerUnaryReactor* VmServiceImpl::SetVmMetadata(grpc::CallbackServerContext* context,
                                                       const v1::SetVmMetadataRequest* request,
                                                       v1::VmMetadata* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "SetVmMetadata", context, request, response,
                     [manager](const v1::SetVmMetadataRequest& req, v1::VmMetadata* out,
                               const CancelToken&) -> absl::Status {
                       if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
                       absl::StatusOr<vm::VmInfo> vm = manager->Get(req.ref());
                       if (!vm.ok()) return vm.status();
                       absl::StatusOr<std::string> doc = manager->SetMetadata(req.ref(), req.json());
                       if (!doc.ok()) return doc.status();
                       out->set_vm_id(vm->id);
                       out->set_json(*std::move(doc));
                       return absl::OkStatus();
                     });
}

grpc::ServerUnaryReactor* VmServiceImpl::ResumeVm(grpc::CallbackServerContext* context,
                                                  const v1::ResumeVmRequest* request, v1::Vm* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(
      deps_, "ResumeVm", context, request, response,
      [manager](const v1::ResumeVmRequest& req, v1::Vm* out, const CancelToken&) -> absl::Status {
        if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
        absl::StatusOr<vm::VmInfo> vm = manager->Resume(req.ref());
        if (!vm.ok()) return vm.status();
        ToProto(*vm, out);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* VmServiceImpl::DeleteVm(grpc::CallbackServerContext* context,
                                                  const v1::DeleteVmRequest* request,
                                                  v1::DeleteVmResponse* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "DeleteVm", context, request, response,
                     [manager](const v1::DeleteVmRequest& req, v1::DeleteVmResponse* out,
                               const CancelToken&) -> absl::Status {
                       if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
                       absl::StatusOr<absl::Duration> grace = DeleteGrace(req);
                       if (!grace.ok()) return grace.status();
                       absl::StatusOr<vm::DeleteResult> result =
                           manager->Delete(req.ref(), req.force(), *grace);
                       if (!result.ok()) return result.status();
                       ToProto(*result, out);
                       return absl::OkStatus();
                     });
}

// ---- SnapshotService ----

grpc::ServerUnaryReactor* SnapshotServiceImpl::CreateSnapshot(grpc::CallbackServerContext* context,
                                                              const v1::CreateSnapshotRequest* request,
                                                              v1::Snapshot* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "CreateSnapshot", context, request, response,
                     [manager](const v1::CreateSnapshotRequest& req, v1::Snapshot* out,
                               const CancelToken& cancel) -> absl::Status {
                       if (req.vm_ref().empty()) return absl::InvalidArgumentError("vm_ref is required");
                       absl::StatusOr<vm::SnapshotRequest> snap = FromProto(req);
                       if (!snap.ok()) return snap.status();
                       absl::StatusOr<vm::SnapshotInfo> info = manager->CreateSnapshot(*snap, cancel);
                       if (!info.ok()) return info.status();
                       ToProto(*info, out);
                       return absl::OkStatus();
                     });
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::GetSnapshot(grpc::CallbackServerContext* context,
                                                           const v1::GetSnapshotRequest* request,
                                                           v1::Snapshot* response) {
  return AnswerNow(context, response, [&](v1::Snapshot* out) -> absl::Status {
    if (request->ref().empty()) return absl::InvalidArgumentError("ref is required");
    absl::StatusOr<vm::SnapshotInfo> info = deps_.manager->GetSnapshot(request->ref());
    if (!info.ok()) return info.status();
    ToProto(*info, out);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::ListSnapshots(grpc::CallbackServerContext* context,
                                                             const v1::ListSnapshotsRequest* request,
                                                             v1::ListSnapshotsResponse* response) {
  return AnswerNow(context, response, [&](v1::ListSnapshotsResponse* out) -> absl::Status {
    std::map<std::string, std::string> selector(request->label_selector().begin(),
                                                request->label_selector().end());
    return FillPage<v1::Snapshot>(
        deps_.manager->ListSnapshots(selector), request->page_size(), request->page_token(),
        [out](v1::Snapshot&& snap) { out->add_snapshots()->Swap(&snap); }, out->mutable_next_page_token());
  });
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::DeleteSnapshot(grpc::CallbackServerContext* context,
                                                              const v1::DeleteSnapshotRequest* request,
                                                              v1::DeleteSnapshotResponse* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "DeleteSnapshot", context, request, response,
                     [manager](const v1::DeleteSnapshotRequest& req, v1::DeleteSnapshotResponse* out,
                               const CancelToken&) -> absl::Status {
                       if (req.ref().empty()) return absl::InvalidArgumentError("ref is required");
                       absl::StatusOr<vm::DeleteSnapshotResult> result =
                           manager->DeleteSnapshot(req.ref(), req.force());
                       if (!result.ok()) return result.status();
                       ToProto(*result, out);
                       return absl::OkStatus();
                     });
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::CloneSnapshot(grpc::CallbackServerContext* context,
                                                             const v1::CloneSnapshotRequest* request,
                                                             v1::CloneSnapshotResponse* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "CloneSnapshot", context, request, response,
                     [manager](const v1::CloneSnapshotRequest& req, v1::CloneSnapshotResponse* out,
                               const CancelToken& cancel) -> absl::Status {
                       if (req.snapshot_ref().empty())
                         return absl::InvalidArgumentError("snapshot_ref is required");
                       absl::StatusOr<vm::CloneRequest> clone = FromProto(req);
                       if (!clone.ok()) return clone.status();
                       absl::StatusOr<vm::CloneResult> result = manager->Clone(*clone, cancel);
                       if (!result.ok()) return result.status();
                       ToProto(*result, out);
                       return absl::OkStatus();
                     });
}

grpc::ServerUnaryReactor* SnapshotServiceImpl::ForkVm(grpc::CallbackServerContext* context,
                                                      const v1::ForkVmRequest* request,
                                                      v1::ForkVmResponse* response) {
  vm::Manager* manager = deps_.manager;
  return RunOnWorker(deps_, "ForkVm", context, request, response,
                     [manager](const v1::ForkVmRequest& req, v1::ForkVmResponse* out,
                               const CancelToken& cancel) -> absl::Status {
                       absl::StatusOr<vm::ForkRequest> fork = FromProto(req);
                       if (!fork.ok()) return fork.status();
                       absl::StatusOr<vm::ForkResult> result = manager->Fork(*fork, cancel);
                       if (!result.ok()) return result.status();
                       ToProto(*result, out);
                       return absl::OkStatus();
                     });
}

}  // namespace fcvm::daemon
