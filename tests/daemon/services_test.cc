// fcvmd's gRPC services in-process over a real VM manager: reads, proto-level
// validation, idempotency, WatchEvents and shutdown. Without Firecracker the
// manager answers VM operations UNAVAILABLE; with it (FCVM_FIRECRACKER_BIN,
// /dev/kvm, the test guest) FullLifecycle drives run, pause, snapshot, clone,
// page-server stats and deletes through the API.

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/daemon.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "fcvm/v1/wire.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::daemon {
namespace {

namespace v1 = fcvm::v1;
using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

class ServicesTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()); }

  void StartDaemon(std::string firecracker = "") {
    DaemonOptions o;
    o.socket_path = dir_.path() + "/fcvmd.sock";
    o.manager.state_dir = dir_.path() + "/state";
    // Jailed where the jailer is present, as fcvmd runs by default.
    if (!firecracker.empty()) {
      std::vector<std::string> jail = e2e::FcvmdJailArgs();
      if (jail[0] == "--jailer") {
        o.jailer_bin = jail[1];
      } else {
        o.no_jailer = true;
      }
    }
    o.manager.firecracker_bin = std::move(firecracker);
    o.workers = 4;
    ASSERT_OK_AND_ASSIGN(daemon_, Daemon::Start(o));
    channel_ = grpc::CreateChannel("unix:" + o.socket_path, grpc::InsecureChannelCredentials());
    vms_ = v1::VmService::NewStub(channel_);
    snaps_ = v1::SnapshotService::NewStub(channel_);
    system_ = v1::SystemService::NewStub(channel_);
  }

  void TearDown() override {
    if (daemon_ != nullptr) daemon_->Shutdown(absl::Seconds(5));
  }

  static std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 60) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return ctx;
  }

  e2e::TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VmService::Stub> vms_;
  std::unique_ptr<v1::SnapshotService::Stub> snaps_;
  std::unique_ptr<v1::SystemService::Stub> system_;
};

TEST_F(ServicesTest, ReadsOnAFreshDaemon) {
  StartDaemon();
  v1::ListVmsResponse vms;
  ASSERT_TRUE(vms_->ListVms(Ctx().get(), {}, &vms).ok());
  EXPECT_EQ(vms.vms_size(), 0);
  v1::Vm vm;
  v1::GetVmRequest get;
  get.set_ref("nope");
  grpc::Status st = vms_->GetVm(Ctx().get(), get, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("nope"));

  v1::ListSnapshotsResponse snaps;
  ASSERT_TRUE(snaps_->ListSnapshots(Ctx().get(), {}, &snaps).ok());
  EXPECT_EQ(snaps.snapshots_size(), 0);
  v1::GetSnapshotRequest gs;
  gs.set_ref("nope");
  v1::Snapshot snap;
  EXPECT_EQ(snaps_->GetSnapshot(Ctx().get(), gs, &snap).error_code(), grpc::StatusCode::NOT_FOUND);

  v1::PageServerStats stats;
  ASSERT_TRUE(system_->GetPageServerStats(Ctx().get(), {}, &stats).ok());
  EXPECT_GT(stats.loop_threads(), 0u);
  EXPECT_EQ(stats.sessions_size(), 0);
  v1::GetPageServerStatsRequest sreq;
  sreq.set_vm_ref("nope");
  EXPECT_EQ(system_->GetPageServerStats(Ctx().get(), sreq, &stats).error_code(), grpc::StatusCode::NOT_FOUND);

  v1::GetVersionResponse version;
  ASSERT_TRUE(system_->GetVersion(Ctx().get(), {}, &version).ok());
  EXPECT_EQ(version.api_version(), 1u);
  EXPECT_EQ(version.firecracker_version(), "");
  EXPECT_GT(version.started_at().seconds(), 0);
}

TEST_F(ServicesTest, ProtoLevelValidation) {
  StartDaemon();
  v1::CloneSnapshotRequest clone;
  clone.set_snapshot_ref("base");
  v1::CloneSnapshotResponse cr;
  grpc::Status st = snaps_->CloneSnapshot(Ctx().get(), clone, &cr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "count must be 1-1024, got 0");

  v1::ListVmsRequest list;
  list.add_states(v1::VM_STATE_UNSPECIFIED);
  v1::ListVmsResponse lr;
  EXPECT_EQ(vms_->ListVms(Ctx().get(), list, &lr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::DeleteVmRequest del;
  del.set_ref("x");
  del.mutable_grace_period()->set_seconds(-1);
  v1::DeleteVmResponse dr;
  EXPECT_EQ(vms_->DeleteVm(Ctx().get(), del, &dr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::RunVmRequest run;
  v1::Vm vm;
  st = vms_->RunVm(Ctx().get(), run, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "config is required");

  v1::PauseVmRequest pause;
  st = vms_->PauseVm(Ctx().get(), pause, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServicesTest, VmOperationsWithoutFirecrackerAreUnavailable) {
  StartDaemon();
  v1::RunVmRequest run;
  run.mutable_config()->set_kernel_path("/nonexistent");
  v1::Vm vm;
  grpc::Status st = vms_->RunVm(Ctx().get(), run, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("--firecracker"));
}

TEST_F(ServicesTest, ClientRequestIdReplaysTheFirstAnswer) {
  StartDaemon();
  v1::PauseVmRequest pause;
  pause.set_ref("ghost");
  pause.set_client_request_id("req-1");
  v1::Vm vm;
  grpc::Status first = vms_->PauseVm(Ctx().get(), pause, &vm);
  EXPECT_EQ(first.error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status again = vms_->PauseVm(Ctx().get(), pause, &vm);
  EXPECT_EQ(again.error_code(), first.error_code());
  EXPECT_EQ(again.error_message(), first.error_message());

  // The same id for a different request is refused, not replayed.
  pause.set_ref("other");
  grpc::Status conflict = vms_->PauseVm(Ctx().get(), pause, &vm);
  EXPECT_EQ(conflict.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(conflict.error_message(), HasSubstr("req-1"));

  // The same id on another method is another request.
  v1::ResumeVmRequest resume;
  resume.set_ref("other");
  resume.set_client_request_id("req-1");
  EXPECT_EQ(vms_->ResumeVm(Ctx().get(), resume, &vm).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServicesTest, WatchEventsUnknownRefIsNotFound) {
  StartDaemon();
  v1::WatchEventsRequest req;
  req.set_ref("nope");
  auto ctx = Ctx(10);
  auto reader = system_->WatchEvents(ctx.get(), req);
  v1::Event ev;
  EXPECT_FALSE(reader->Read(&ev));
  grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServicesTest, ShutdownEndsOpenStreamsPromptly) {
  StartDaemon();
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::Event>>> readers;
  for (int i = 0; i < 3; ++i) {
    ctxs.push_back(Ctx(60));
    readers.push_back(system_->WatchEvents(ctxs.back().get(), {}));
    readers.back()->WaitForInitialMetadata();  // subscribed
  }
  // One client goes away on its own first.
  ctxs[2]->TryCancel();
  v1::Event ev;
  EXPECT_FALSE(readers[2]->Read(&ev));
  EXPECT_EQ(readers[2]->Finish().error_code(), grpc::StatusCode::CANCELLED);

  absl::Time start = absl::Now();
  daemon_->Shutdown(absl::Seconds(5));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3)) << "Shutdown waited for the streams' deadline";
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(readers[i]->Read(&ev));
    grpc::Status st = readers[i]->Finish();
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  }
  // After Shutdown nothing answers.
  v1::ListVmsResponse vms;
  EXPECT_FALSE(vms_->ListVms(Ctx(2).get(), {}, &vms).ok());
}

TEST_F(ServicesTest, StartFailsWhenTheManagerCannotBeCreated) {
  DaemonOptions o;
  o.socket_path = dir_.path() + "/fcvmd.sock";
  o.manager.state_dir = dir_.path() + "/state";
  o.manager.firecracker_bin = dir_.path() + "/no-such-firecracker";
  absl::StatusOr<std::unique_ptr<Daemon>> d = Daemon::Start(o);
  EXPECT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("no-such-firecracker"));
  o.manager.firecracker_bin = "";
  o.workers = 0;
  EXPECT_THAT(Daemon::Start(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--workers")));
}

// ---- With the real Firecracker ----

// Collects a WatchEvents stream on its own thread.
class EventCollector {
 public:
  EventCollector(v1::SystemService::Stub* stub, const std::string& ref) {
    v1::WatchEventsRequest req;
    req.set_ref(ref);
    reader_ = stub->WatchEvents(&ctx_, req);
    reader_->WaitForInitialMetadata();
    thread_ = std::thread([this] {
      v1::Event ev;
      while (reader_->Read(&ev)) {
        absl::MutexLock lock(&mu_);
        events_.push_back(ev);
      }
      status_ = reader_->Finish();
    });
  }
  ~EventCollector() {
    ctx_.TryCancel();
    thread_.join();
  }
  // Waits until `pred` holds for some event.
  bool WaitFor(std::function<bool(const v1::Event&)> pred, absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu_);
        for (const v1::Event& e : events_)
          if (pred(e)) return true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  std::vector<v1::Event> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<v1::Event> events_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_;
};

TEST_F(ServicesTest, FullLifecycleWithFirecracker) {
  std::string missing = e2e::MissingPrerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  StartDaemon(e2e::FirecrackerPath());
  EventCollector all(system_.get(), "");

  v1::RunVmRequest run;
  run.set_name("src");
  (*run.mutable_labels())["role"] = "source";
  run.mutable_config()->set_kernel_path(e2e::GuestPath());
  run.mutable_config()->set_boot_args(e2e::kGuestBootArgs);
  run.mutable_config()->set_vcpu_count(1);
  run.mutable_config()->set_memory_mib(e2e::kGuestMemMib);
  run.set_client_request_id("run-src");
  v1::Vm src;
  grpc::Status st = vms_->RunVm(Ctx(120).get(), run, &src);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(src.state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(src.name(), "src");
  EXPECT_GT(src.pid(), 0);
  EXPECT_TRUE(src.has_created_at());
  // A retry returns the same VM instead of booting another.
  v1::Vm again;
  ASSERT_TRUE(vms_->RunVm(Ctx(120).get(), run, &again).ok());
  EXPECT_EQ(again.id(), src.id());
  v1::ListVmsResponse list;
  ASSERT_TRUE(vms_->ListVms(Ctx().get(), {}, &list).ok());
  EXPECT_EQ(list.vms_size(), 1);
  EXPECT_TRUE(all.WaitFor(
      [&](const v1::Event& e) { return e.vm_id() == src.id() && e.state() == v1::VM_STATE_RUNNING; },
      absl::Seconds(10)));

  v1::PauseVmRequest pause;
  pause.set_ref("src");
  v1::Vm vm;
  ASSERT_TRUE(vms_->PauseVm(Ctx().get(), pause, &vm).ok());
  EXPECT_EQ(vm.state(), v1::VM_STATE_PAUSED);
  st = vms_->PauseVm(Ctx().get(), pause, &vm);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  v1::ResumeVmRequest resume;
  resume.set_ref(src.id());
  ASSERT_TRUE(vms_->ResumeVm(Ctx().get(), resume, &vm).ok());
  EXPECT_EQ(vm.state(), v1::VM_STATE_RUNNING);

  EventCollector snap_events(system_.get(), "src");
  v1::CreateSnapshotRequest cs;
  cs.set_vm_ref("src");
  cs.set_name("base");
  v1::Snapshot snap;
  st = snaps_->CreateSnapshot(Ctx(300).get(), cs, &snap);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(snap.name(), "base");
  EXPECT_EQ(snap.source_vm_id(), src.id());
  EXPECT_EQ(snap.memory_bytes(), uint64_t{e2e::kGuestMemMib} << 20);
  EXPECT_TRUE(snap.has_create_duration());
  v1::GetSnapshotRequest gs;
  gs.set_ref("base");
  v1::Snapshot got;
  ASSERT_TRUE(snaps_->GetSnapshot(Ctx().get(), gs, &got).ok());
  EXPECT_EQ(got.id(), snap.id());
  EXPECT_TRUE(all.WaitFor(
      [&](const v1::Event& e) {
        return e.kind() == v1::Event::KIND_SNAPSHOT_CREATED && e.snapshot_id() == snap.id();
      },
      absl::Seconds(10)));

  v1::CloneSnapshotRequest clone;
  clone.set_snapshot_ref("base");
  clone.set_count(2);
  clone.set_name_prefix("c");
  v1::CloneSnapshotResponse clones;
  st = snaps_->CloneSnapshot(Ctx(300).get(), clone, &clones);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(clones.clones_size(), 2);
  EXPECT_EQ(clones.succeeded(), 2u);
  for (const v1::Vm& c : clones.clones()) {
    EXPECT_EQ(c.state(), v1::VM_STATE_RUNNING) << c.error();
    EXPECT_EQ(c.snapshot_id(), snap.id());
    EXPECT_EQ(c.memory_backend(), v1::MEMORY_BACKEND_UFFD);
  }

  v1::GetPageServerStatsRequest sreq;
  sreq.set_vm_ref(clones.clones(0).name());
  v1::PageServerStats stats;
  ASSERT_TRUE(system_->GetPageServerStats(Ctx().get(), sreq, &stats).ok());
  ASSERT_EQ(stats.sessions_size(), 1);
  EXPECT_EQ(stats.sessions(0).vm_id(), clones.clones(0).id());
  EXPECT_EQ(stats.sessions(0).snapshot_id(), snap.id());
  EXPECT_GT(stats.sessions(0).peer_pid(), 0);
  ASSERT_GE(stats.snapshots_size(), 1);
  EXPECT_EQ(stats.snapshots(0).snapshot_id(), snap.id());
  ASSERT_TRUE(system_->GetPageServerStats(Ctx().get(), {}, &stats).ok());
  EXPECT_EQ(stats.sessions_size(), 2);

  v1::ListVmsRequest of_snap;
  of_snap.set_snapshot_ref("base");
  ASSERT_TRUE(vms_->ListVms(Ctx().get(), of_snap, &list).ok());
  EXPECT_EQ(list.vms_size(), 2);

  v1::DeleteSnapshotRequest ds;
  ds.set_ref("base");
  v1::DeleteSnapshotResponse dsr;
  st = snaps_->DeleteSnapshot(Ctx(120).get(), ds, &dsr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  ds.set_force(true);
  st = snaps_->DeleteSnapshot(Ctx(120).get(), ds, &dsr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(dsr.id(), snap.id());
  EXPECT_EQ(dsr.stopped_vm_ids_size(), 2);

  v1::DeleteVmRequest del;
  del.set_ref("src");
  del.set_force(true);
  v1::DeleteVmResponse dr;
  st = vms_->DeleteVm(Ctx(120).get(), del, &dr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(dr.id(), src.id());
  EXPECT_EQ(dr.stop_mode(), "forced");

  // The filtered stream saw only the source VM's events.
  for (const v1::Event& e : snap_events.events()) EXPECT_EQ(e.vm_id(), src.id()) << e.DebugString();
  EXPECT_TRUE(snap_events.WaitFor([&](const v1::Event& e) { return e.kind() == v1::Event::KIND_VM_STATE; },
                                  absl::Seconds(10)));
}

// Listings are paged (a listing could otherwise outgrow what a client can
// receive); events are numbered and a late watcher can start from the
// backlog; every answer carries fcvmd's mark.
TEST_F(ServicesTest, PagedListingsNumberedEventsAndTheServedByMark) {
  std::string missing = e2e::MissingPrerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  StartDaemon(e2e::FirecrackerPath());
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::RunVmRequest run;
    run.set_name(absl::StrCat("vm", i));
    run.mutable_config()->set_kernel_path(e2e::GuestPath());
    run.mutable_config()->set_boot_args(e2e::kGuestBootArgs);
    run.mutable_config()->set_vcpu_count(1);
    run.mutable_config()->set_memory_mib(e2e::kGuestMemMib);
    v1::Vm vm;
    grpc::Status st = vms_->RunVm(Ctx(120).get(), run, &vm);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ids.push_back(vm.id());
  }
  // 3.5 MB of labels is refused; before, two such VMs made every ListVms
  // fail ("Received message larger than max").
  v1::RunVmRequest huge;
  huge.mutable_config()->set_kernel_path(e2e::GuestPath());
  huge.mutable_config()->set_vcpu_count(1);
  huge.mutable_config()->set_memory_mib(e2e::kGuestMemMib);
  (*huge.mutable_labels())["blob"] = std::string(3500000, 'x');
  v1::Vm refused;
  grpc::Status big = vms_->RunVm(Ctx(120).get(), huge, &refused);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << big.error_message();
  EXPECT_THAT(big.error_message(), ::testing::HasSubstr("at most 256"));
  v1::ListVmsRequest page;
  page.set_page_size(2);
  v1::ListVmsResponse first, second;
  auto ctx = Ctx();
  ASSERT_TRUE(vms_->ListVms(ctx.get(), page, &first).ok());
  EXPECT_EQ(ctx->GetServerTrailingMetadata().count(v1::kServedByKey), 1u);
  ASSERT_EQ(first.vms_size(), 2);
  EXPECT_EQ(first.vms(0).name(), "vm0");
  EXPECT_EQ(first.vms(1).name(), "vm1");
  ASSERT_FALSE(first.next_page_token().empty());
  page.set_page_token(first.next_page_token());
  ASSERT_TRUE(vms_->ListVms(Ctx().get(), page, &second).ok());
  ASSERT_EQ(second.vms_size(), 1);
  EXPECT_EQ(second.vms(0).name(), "vm2");
  EXPECT_TRUE(second.next_page_token().empty());
  page.set_page_token("not-a-token");
  EXPECT_EQ(vms_->ListVms(Ctx().get(), page, &second).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A watcher that connects now still gets every event, numbered from 1.
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::WatchEventsRequest watch;
  watch.set_from_backlog(true);
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader = system_->WatchEvents(&wctx, watch);
  std::vector<v1::Event> events;
  v1::Event ev;
  while (reader->Read(&ev)) events.push_back(ev);
  ASSERT_GE(events.size(), 3u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), i + 1);
  for (const std::string& id : ids) {
    v1::DeleteVmRequest del;
    del.set_ref(id);
    del.set_force(true);
    v1::DeleteVmResponse out;
    EXPECT_TRUE(vms_->DeleteVm(Ctx().get(), del, &out).ok());
  }
}

}  // namespace
}  // namespace fcvm::daemon
