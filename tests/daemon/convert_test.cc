// Proto <-> domain conversion, field by field.

#include "daemon/convert.h"

#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::daemon {
namespace {

namespace v1 = fcvm::v1;
using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

absl::Time T(int64_t unix_ms) { return absl::FromUnixMillis(unix_ms); }

vm::VmConfig SampleConfig() {
  vm::VmConfig c;
  c.kernel_path = "/k/vmlinux";
  c.initrd_path = "/k/initrd";
  c.boot_args = "console=ttyS0";
  c.vcpu_count = 2;
  c.memory_mib = 256;
  c.drives.push_back({"rootfs", "/img/root.ext4", true, false});
  c.drives.push_back({"data", "/img/data.ext4", false, true});
  c.network.enabled = true;
  c.network.guest_mac = "06:00:ac:10:00:02";
  return c;
}

TEST(ConvertTest, DurationAndTimestamp) {
  google::protobuf::Duration d;
  ToProto(absl::Milliseconds(1500) + absl::Nanoseconds(7), &d);
  EXPECT_EQ(d.seconds(), 1);
  EXPECT_EQ(d.nanos(), 500000007);
  EXPECT_EQ(FromProto(d), absl::Milliseconds(1500) + absl::Nanoseconds(7));

  google::protobuf::Timestamp ts;
  ToProto(T(1700000000123), &ts);
  EXPECT_EQ(ts.seconds(), 1700000000);
  EXPECT_EQ(ts.nanos(), 123000000);
}

TEST(ConvertTest, EnumsBothWaysAndDefaults) {
  const std::pair<vm::VmState, v1::VmState> states[] = {
      {vm::VmState::kCreating, v1::VM_STATE_CREATING}, {vm::VmState::kRunning, v1::VM_STATE_RUNNING},
      {vm::VmState::kPaused, v1::VM_STATE_PAUSED},     {vm::VmState::kStopping, v1::VM_STATE_STOPPING},
      {vm::VmState::kStopped, v1::VM_STATE_STOPPED},   {vm::VmState::kFailed, v1::VM_STATE_FAILED}};
  for (auto [domain, proto] : states) {
    EXPECT_EQ(ToProto(domain), proto);
    ASSERT_OK_AND_ASSIGN(vm::VmState back, FromProto(proto));
    EXPECT_EQ(back, domain);
  }
  EXPECT_THAT(FromProto(v1::VM_STATE_UNSPECIFIED), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(FromProto(static_cast<v1::VmState>(99)), StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_EQ(FromProto(v1::MEMORY_BACKEND_UNSPECIFIED).value(), vm::MemoryBackend::kUffd);
  EXPECT_EQ(FromProto(v1::MEMORY_BACKEND_UFFD).value(), vm::MemoryBackend::kUffd);
  EXPECT_EQ(FromProto(v1::MEMORY_BACKEND_FILE).value(), vm::MemoryBackend::kFile);
  EXPECT_THAT(FromProto(static_cast<v1::MemoryBackend>(7)), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(ToProto(vm::MemoryBackend::kUffd), v1::MEMORY_BACKEND_UFFD);
  EXPECT_EQ(ToProto(vm::MemoryBackend::kFile), v1::MEMORY_BACKEND_FILE);

  EXPECT_EQ(FromProto(v1::PREFETCH_POLICY_UNSPECIFIED).value(), vm::ClonePolicy::kAuto);
  EXPECT_EQ(FromProto(v1::PREFETCH_POLICY_NONE).value(), vm::ClonePolicy::kNone);
  EXPECT_EQ(FromProto(v1::PREFETCH_POLICY_RECORD).value(), vm::ClonePolicy::kRecord);
  EXPECT_EQ(FromProto(v1::PREFETCH_POLICY_PREFETCH).value(), vm::ClonePolicy::kPrefetch);
  EXPECT_EQ(FromProto(v1::PREFETCH_POLICY_AUTO).value(), vm::ClonePolicy::kAuto);
  EXPECT_THAT(FromProto(static_cast<v1::PrefetchPolicy>(9)), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(ToProto(vm::ClonePolicy::kNone), v1::PREFETCH_POLICY_NONE);
  EXPECT_EQ(ToProto(vm::ClonePolicy::kRecord), v1::PREFETCH_POLICY_RECORD);
  EXPECT_EQ(ToProto(vm::ClonePolicy::kPrefetch), v1::PREFETCH_POLICY_PREFETCH);
  EXPECT_EQ(ToProto(vm::ClonePolicy::kAuto), v1::PREFETCH_POLICY_AUTO);

  EXPECT_EQ(FromProto(v1::AFTER_SNAPSHOT_UNSPECIFIED).value(), vm::AfterSnapshot::kResume);
  EXPECT_EQ(FromProto(v1::AFTER_SNAPSHOT_RESUME).value(), vm::AfterSnapshot::kResume);
  EXPECT_EQ(FromProto(v1::AFTER_SNAPSHOT_STAY_PAUSED).value(), vm::AfterSnapshot::kStayPaused);
  EXPECT_EQ(FromProto(v1::AFTER_SNAPSHOT_STOP).value(), vm::AfterSnapshot::kStop);
  EXPECT_THAT(FromProto(static_cast<v1::AfterSnapshot>(4)), StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_EQ(ToProto(vm::EventKind::kVmState), v1::Event::KIND_VM_STATE);
  EXPECT_EQ(ToProto(vm::EventKind::kSnapshotCreated), v1::Event::KIND_SNAPSHOT_CREATED);
  EXPECT_EQ(ToProto(vm::EventKind::kSnapshotDeleted), v1::Event::KIND_SNAPSHOT_DELETED);
  EXPECT_EQ(ToProto(vm::EventKind::kPageServerDrop), v1::Event::KIND_PAGE_SERVER_DROP);
  EXPECT_EQ(ToProto(vm::EventKind::kReconcile), v1::Event::KIND_RECONCILE);
}

TEST(ConvertTest, VmConfigRoundTrip) {
  v1::VmConfig proto;
  ToProto(SampleConfig(), &proto);
  EXPECT_EQ(proto.kernel_path(), "/k/vmlinux");
  EXPECT_EQ(proto.initrd_path(), "/k/initrd");
  EXPECT_EQ(proto.boot_args(), "console=ttyS0");
  EXPECT_EQ(proto.vcpu_count(), 2u);
  EXPECT_EQ(proto.memory_mib(), 256u);
  ASSERT_EQ(proto.drives_size(), 2);
  EXPECT_EQ(proto.drives(0).drive_id(), "rootfs");
  EXPECT_EQ(proto.drives(0).path(), "/img/root.ext4");
  EXPECT_TRUE(proto.drives(0).is_root_device());
  EXPECT_FALSE(proto.drives(0).read_only());
  EXPECT_EQ(proto.drives(1).drive_id(), "data");
  EXPECT_FALSE(proto.drives(1).is_root_device());
  EXPECT_TRUE(proto.drives(1).read_only());
  EXPECT_TRUE(proto.network().enabled());
  EXPECT_EQ(proto.network().guest_mac(), "06:00:ac:10:00:02");

  ASSERT_OK_AND_ASSIGN(vm::VmConfig back, FromProto(proto));
  EXPECT_EQ(back.kernel_path, "/k/vmlinux");
  EXPECT_EQ(back.initrd_path, "/k/initrd");
  EXPECT_EQ(back.boot_args, "console=ttyS0");
  EXPECT_EQ(back.vcpu_count, 2u);
  EXPECT_EQ(back.memory_mib, 256u);
  ASSERT_EQ(back.drives.size(), 2u);
  EXPECT_EQ(back.drives[1].drive_id, "data");
  EXPECT_EQ(back.drives[1].path, "/img/data.ext4");
  EXPECT_TRUE(back.drives[1].read_only);
  EXPECT_TRUE(back.drives[0].is_root_device);
  EXPECT_TRUE(back.network.enabled);
  EXPECT_EQ(back.network.guest_mac, "06:00:ac:10:00:02");
  EXPECT_FALSE(proto.has_vsock()) << "no vsock: left unset";

  vm::VmConfig with_vsock = SampleConfig();
  with_vsock.vsock = {true, 9};
  ToProto(with_vsock, &proto);
  EXPECT_TRUE(proto.vsock().enabled());
  EXPECT_EQ(proto.vsock().guest_cid(), 9u);
  ASSERT_OK_AND_ASSIGN(vm::VmConfig vsock_back, FromProto(proto));
  EXPECT_TRUE(vsock_back.vsock.enabled);
  EXPECT_EQ(vsock_back.vsock.guest_cid, 9u);
}

TEST(ConvertTest, PublishedPorts) {
  v1::VmConfig proto;
  proto.mutable_network()->set_enabled(true);
  v1::PortMapping* web = proto.mutable_network()->add_publish();
  web->set_host_port(8080);
  web->set_guest_port(80);  // protocol left empty: tcp
  v1::PortMapping* dns = proto.mutable_network()->add_publish();
  dns->set_host_port(5353);
  dns->set_guest_port(53);
  dns->set_protocol("udp");
  ASSERT_OK_AND_ASSIGN(vm::VmConfig c, FromProto(proto));
  ASSERT_EQ(c.network.publish.size(), 2u);
  EXPECT_EQ(c.network.publish[0].host_port, 8080);
  EXPECT_EQ(c.network.publish[0].guest_port, 80);
  EXPECT_EQ(c.network.publish[0].protocol, "tcp");
  EXPECT_EQ(c.network.publish[1].host_port, 5353);
  EXPECT_EQ(c.network.publish[1].protocol, "udp");

  v1::VmConfig back;
  ToProto(c, &back);
  ASSERT_EQ(back.network().publish_size(), 2);
  EXPECT_EQ(back.network().publish(1).host_port(), 5353u);
  EXPECT_EQ(back.network().publish(1).guest_port(), 53u);
  EXPECT_EQ(back.network().publish(1).protocol(), "udp");

  // A port that does not fit in 16 bits would wrap in the domain.
  dns->set_host_port(70000);
  EXPECT_THAT(FromProto(proto), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("config.network.publish[1]: ports must be 1-65535")));
}

TEST(ConvertTest, VmInfoToVm) {
  vm::VmInfo info;
  info.id = "vm-0123456789ab";
  info.name = "web-0";
  info.labels = {{"app", "web"}, {"tier", "front"}};
  info.state = vm::VmState::kPaused;
  info.config = SampleConfig();
  info.snapshot_id = "snap-aaaaaaaaaaaa";
  info.memory_backend = vm::MemoryBackend::kFile;
  info.prefetch_policy = vm::ClonePolicy::kRecord;
  info.pid = 4242;
  info.console_log_path = "/var/lib/fcvm/vms/vm-0123456789ab/console.log";
  info.created_at = T(1700000000500);
  info.timings = {absl::Milliseconds(120),
                  absl::Milliseconds(10),
                  absl::Milliseconds(20),
                  absl::Milliseconds(30),
                  absl::Milliseconds(40),
                  absl::Milliseconds(5),
                  true};
  info.error = "boom";
  info.vsock_path = "/var/lib/fcvm/vms/vm-0123456789ab/vsock.sock";
  info.network.netns = "fcvm-0123456789ab";
  info.network.tap = "tap0";
  info.network.guest_ip = "172.16.0.2";
  info.network.host_ip = "10.200.0.7";
  info.network.guest_mac = "06:00:ac:10:00:02";
  info.network.publish = {{8080, 80, "tcp"}};

  v1::Vm vm;
  ToProto(info, &vm);
  EXPECT_EQ(vm.id(), "vm-0123456789ab");
  EXPECT_EQ(vm.name(), "web-0");
  ASSERT_EQ(vm.labels_size(), 2);
  EXPECT_EQ(vm.labels().at("app"), "web");
  EXPECT_EQ(vm.labels().at("tier"), "front");
  EXPECT_EQ(vm.state(), v1::VM_STATE_PAUSED);
  EXPECT_EQ(vm.config().kernel_path(), "/k/vmlinux");
  EXPECT_EQ(vm.config().drives_size(), 2);
  EXPECT_EQ(vm.snapshot_id(), "snap-aaaaaaaaaaaa");
  EXPECT_EQ(vm.memory_backend(), v1::MEMORY_BACKEND_FILE);
  EXPECT_EQ(vm.prefetch_policy(), v1::PREFETCH_POLICY_RECORD);
  EXPECT_EQ(vm.pid(), 4242);
  EXPECT_EQ(vm.console_log_path(), "/var/lib/fcvm/vms/vm-0123456789ab/console.log");
  EXPECT_EQ(vm.vsock_uds_path(), "/var/lib/fcvm/vms/vm-0123456789ab/vsock.sock");
  EXPECT_EQ(vm.network().netns(), "fcvm-0123456789ab");
  EXPECT_EQ(vm.network().tap(), "tap0");
  EXPECT_EQ(vm.network().guest_ip(), "172.16.0.2");
  EXPECT_EQ(vm.network().host_ip(), "10.200.0.7");
  EXPECT_EQ(vm.network().guest_mac(), "06:00:ac:10:00:02");
  ASSERT_EQ(vm.network().publish_size(), 1);
  EXPECT_EQ(vm.network().publish(0).host_port(), 8080u);
  EXPECT_EQ(vm.network().publish(0).guest_port(), 80u);
  EXPECT_EQ(vm.network().publish(0).protocol(), "tcp");
  EXPECT_EQ(vm.created_at().seconds(), 1700000000);
  EXPECT_EQ(vm.created_at().nanos(), 500000000);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().total()), 120);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().process_ready()), 10);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().disks()), 20);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().load()), 30);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().prefetch()), 40);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(vm.timings().network()), 5);
  EXPECT_TRUE(vm.timings().from_warm_pool());
  EXPECT_EQ(vm.error(), "boom");

  // An unset creation time stays unset rather than claiming 1970.
  vm::VmInfo bare;
  ToProto(bare, &vm);
  EXPECT_FALSE(vm.has_created_at());
  EXPECT_EQ(vm.state(), v1::VM_STATE_CREATING);
  EXPECT_FALSE(vm.has_network());
}

TEST(ConvertTest, HugePagesBothWaysAndUnknownRefused) {
  vm::VmConfig c = SampleConfig();
  v1::VmConfig proto;
  ToProto(c, &proto);
  EXPECT_EQ(proto.huge_pages(), v1::HUGE_PAGES_NONE);
  c.huge_pages = vm::HugePages::k2M;
  ToProto(c, &proto);
  EXPECT_EQ(proto.huge_pages(), v1::HUGE_PAGES_2M);
  ASSERT_OK_AND_ASSIGN(vm::VmConfig back, FromProto(proto));
  EXPECT_EQ(back.huge_pages, vm::HugePages::k2M);

  proto.set_huge_pages(v1::HUGE_PAGES_UNSPECIFIED);
  ASSERT_OK_AND_ASSIGN(back, FromProto(proto));
  EXPECT_EQ(back.huge_pages, vm::HugePages::kNone) << "unspecified means 4 KiB pages";
  proto.set_huge_pages(static_cast<v1::HugePages>(99));
  EXPECT_THAT(FromProto(proto).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.huge_pages")));

  vm::SnapshotInfo info;
  info.config = c;
  info.memory_page_size = 2 << 20;
  v1::Snapshot s;
  ToProto(info, &s);
  EXPECT_EQ(s.memory_page_size(), 2u << 20);
  EXPECT_EQ(s.config().huge_pages(), v1::HUGE_PAGES_2M);
}

TEST(ConvertTest, SnapshotInfoToSnapshot) {
  vm::SnapshotInfo info;
  info.id = "snap-0123456789ab";
  info.name = "base";
  info.labels = {{"k", "v"}};
  info.source_vm_id = "vm-0123456789ab";
  info.config = SampleConfig();
  info.firecracker_version = "1.14.2";
  info.memory_bytes = 128 << 20;
  info.vmstate_bytes = 12345;
  info.zero_pages = 1000;
  info.working_set_pages = 77;
  info.vmstate_sha256 = "aa";
  info.memory_sha256 = "bb";
  info.created_at = T(1700000001000);
  info.clone_count = 3;
  info.path = "/var/lib/fcvm/snapshots/snap-0123456789ab";
  info.create_duration = absl::Milliseconds(250);

  v1::Snapshot s;
  ToProto(info, &s);
  EXPECT_FALSE(s.has_host()) << "not recorded: left unset";
  info.host_recorded = true;
  info.host.firecracker_version = "1.14.2";
  info.host.snapshot_format = "8.0.0";
  info.host.cpu.vendor = "AuthenticAMD";
  info.host.cpu.family = 25;
  info.host.cpu.model = 1;
  info.host.cpu.flags = {"avx", "avx2"};
  info.host.kernel_release = "6.18.44";
  info.host.page_size = 4096;
  ToProto(info, &s);
  EXPECT_EQ(s.host().snapshot_format_version(), "8.0.0");
  EXPECT_EQ(s.host().cpu_vendor(), "AuthenticAMD");
  EXPECT_EQ(s.host().cpu_family(), 25u);
  EXPECT_EQ(s.host().cpu_flags_size(), 2);
  EXPECT_EQ(s.host().kernel_release(), "6.18.44");
  EXPECT_EQ(s.host().page_size(), 4096u);
  EXPECT_EQ(s.id(), "snap-0123456789ab");
  EXPECT_EQ(s.name(), "base");
  EXPECT_EQ(s.labels().at("k"), "v");
  EXPECT_EQ(s.source_vm_id(), "vm-0123456789ab");
  EXPECT_EQ(s.config().memory_mib(), 256u);
  EXPECT_EQ(s.firecracker_version(), "1.14.2");
  EXPECT_EQ(s.memory_bytes(), 128u << 20);
  EXPECT_EQ(s.vmstate_bytes(), 12345u);
  EXPECT_EQ(s.zero_pages(), 1000u);
  EXPECT_EQ(s.working_set_pages(), 77u);
  EXPECT_EQ(s.vmstate_sha256(), "aa");
  EXPECT_EQ(s.memory_sha256(), "bb");
  EXPECT_EQ(s.created_at().seconds(), 1700000001);
  EXPECT_EQ(s.clone_count(), 3u);
  EXPECT_EQ(s.path(), "/var/lib/fcvm/snapshots/snap-0123456789ab");
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(s.create_duration()), 250);
}

TEST(ConvertTest, Event) {
  vm::Event e;
  e.kind = vm::EventKind::kVmState;
  e.time = T(1700000002000);
  e.vm_id = "vm-1";
  e.snapshot_id = "snap-1";
  e.state = vm::VmState::kRunning;
  e.previous_state = vm::VmState::kCreating;
  e.message = "started";
  v1::Event p;
  ToProto(e, &p);
  EXPECT_EQ(p.kind(), v1::Event::KIND_VM_STATE);
  EXPECT_EQ(p.time().seconds(), 1700000002);
  EXPECT_EQ(p.vm_id(), "vm-1");
  EXPECT_EQ(p.snapshot_id(), "snap-1");
  EXPECT_EQ(p.state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(p.previous_state(), v1::VM_STATE_CREATING);
  EXPECT_EQ(p.message(), "started");

  // States only mean something for VM state events.
  e.kind = vm::EventKind::kSnapshotCreated;
  ToProto(e, &p);
  EXPECT_EQ(p.kind(), v1::Event::KIND_SNAPSHOT_CREATED);
  EXPECT_EQ(p.state(), v1::VM_STATE_UNSPECIFIED);
  EXPECT_EQ(p.previous_state(), v1::VM_STATE_UNSPECIFIED);
}

uffd::PageStats SampleStats(uint64_t base) {
  uffd::PageStats s;
  s.faults = base + 1;
  s.pages_copied = base + 2;
  s.zero_pages = base + 3;
  s.prefetched_pages = base + 4;
  s.bytes_copied = base + 5;
  s.eagain = base + 6;
  s.eexist = base + 7;
  s.remove_events = base + 8;
  for (int i = 0; i < 99; ++i) s.latency.Add(10000);  // 10 us
  s.latency.Add(5000000);                             // 5 ms
  return s;
}

TEST(ConvertTest, FaultStats) {
  uffd::PageStats s = SampleStats(0);
  v1::FaultStats p;
  ToProto(s, &p);
  EXPECT_EQ(p.faults(), 1u);
  EXPECT_EQ(p.pages_copied(), 2u);
  EXPECT_EQ(p.zero_pages(), 3u);
  EXPECT_EQ(p.prefetched_pages(), 4u);
  EXPECT_EQ(p.bytes_copied(), 5u);
  EXPECT_EQ(p.eagain_retries(), 6u);
  EXPECT_EQ(p.eexist(), 7u);
  EXPECT_EQ(p.remove_events(), 8u);
  EXPECT_DOUBLE_EQ(p.latency_p50_us(), s.p50_us());
  EXPECT_DOUBLE_EQ(p.latency_p99_us(), s.p99_us());
  // The histogram's buckets are ~19% wide: 10 us lands in [10, 12.5].
  EXPECT_GE(p.latency_p50_us(), 10.0);
  EXPECT_LE(p.latency_p50_us(), 12.5);
  EXPECT_LE(p.latency_p99_us(), 12.5);
}

TEST(ConvertTest, PageServerStatsWithContextAndFilter) {
  uffd::ServerStats stats;
  uffd::ListenerStats a;
  a.tag = "vm-a";
  a.mem_file = "/s/snap-1/memory";
  a.sessions.push_back({1, 100, SampleStats(10)});
  uffd::ListenerStats b;
  b.tag = "vm-b";
  b.mem_file = "/s/snap-1/memory";
  b.sessions.push_back({2, 200, SampleStats(20)});
  uffd::ListenerStats idle;  // no live session: not listed
  idle.tag = "vm-c";
  stats.listeners = {a, b, idle};
  uffd::SnapshotStats snap;
  snap.mem_file = "/s/snap-1/memory";
  snap.pages = 100;
  snap.listeners = 2;
  snap.stats = SampleStats(30);
  stats.snapshots = {snap};
  stats.total = SampleStats(40);

  PageServerContext ctx;
  ctx.loop_threads = 2;
  ctx.dropped_sessions = 5;
  ctx.clones["vm-a"] = {"snap-1", vm::ClonePolicy::kPrefetch};
  ctx.clones["vm-b"] = {"snap-1", vm::ClonePolicy::kRecord};
  ctx.memory_files["/s/snap-1/memory"] = {"snap-1", 409600};

  v1::PageServerStats out;
  ToProto(stats, ctx, &out);
  EXPECT_EQ(out.loop_threads(), 2u);
  EXPECT_EQ(out.dropped_sessions(), 5u);
  ASSERT_EQ(out.sessions_size(), 2);
  EXPECT_EQ(out.sessions(0).vm_id(), "vm-a");
  EXPECT_EQ(out.sessions(0).snapshot_id(), "snap-1");
  EXPECT_EQ(out.sessions(0).peer_pid(), 100);
  EXPECT_EQ(out.sessions(0).policy(), v1::PREFETCH_POLICY_PREFETCH);
  EXPECT_EQ(out.sessions(0).stats().faults(), 11u);
  EXPECT_EQ(out.sessions(1).vm_id(), "vm-b");
  EXPECT_EQ(out.sessions(1).peer_pid(), 200);
  EXPECT_EQ(out.sessions(1).policy(), v1::PREFETCH_POLICY_RECORD);
  EXPECT_EQ(out.sessions(1).stats().remove_events(), 28u);
  ASSERT_EQ(out.snapshots_size(), 1);
  EXPECT_EQ(out.snapshots(0).snapshot_id(), "snap-1");
  EXPECT_EQ(out.snapshots(0).memory_bytes(), 409600u);
  EXPECT_EQ(out.snapshots(0).sessions(), 2u);
  EXPECT_EQ(out.snapshots(0).stats().faults(), 31u);
  EXPECT_EQ(out.total().faults(), 41u);
  EXPECT_EQ(out.total().bytes_copied(), 45u);

  ctx.vm_id = "vm-b";
  ToProto(stats, ctx, &out);
  ASSERT_EQ(out.sessions_size(), 1);
  EXPECT_EQ(out.sessions(0).vm_id(), "vm-b");
  EXPECT_EQ(out.total().faults(), 41u);  // the server's total either way
}

TEST(ConvertTest, Requests) {
  v1::RunVmRequest run;
  EXPECT_THAT(FromProto(run), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config")));
  run.set_name("web");
  (*run.mutable_labels())["a"] = "b";
  run.mutable_config()->set_kernel_path("/k");
  run.mutable_config()->set_memory_mib(64);
  ASSERT_OK_AND_ASSIGN(vm::RunRequest r, FromProto(run));
  EXPECT_EQ(r.name, "web");
  EXPECT_EQ(r.labels.at("a"), "b");
  EXPECT_EQ(r.config.kernel_path, "/k");
  EXPECT_EQ(r.config.memory_mib, 64u);
  EXPECT_EQ(r.metadata_json, "");
  run.set_metadata_json(R"({"a": 1})");
  run.mutable_config()->set_mmds_version("V1");
  ASSERT_OK_AND_ASSIGN(vm::RunRequest with_metadata, FromProto(run));
  EXPECT_EQ(with_metadata.metadata_json, R"({"a": 1})");
  EXPECT_EQ(with_metadata.config.mmds_version, "V1");
  v1::VmConfig back;
  ToProto(with_metadata.config, &back);
  EXPECT_EQ(back.mmds_version(), "V1");
  v1::CloneSnapshotRequest clone_with_metadata;
  clone_with_metadata.set_count(1);
  clone_with_metadata.set_metadata_json("{}");
  ASSERT_OK_AND_ASSIGN(vm::CloneRequest with_md, FromProto(clone_with_metadata));
  EXPECT_EQ(with_md.metadata_json, "{}");

  v1::ListVmsRequest list;
  (*list.mutable_label_selector())["app"] = "x";
  list.add_states(v1::VM_STATE_RUNNING);
  list.add_states(v1::VM_STATE_PAUSED);
  list.set_snapshot_ref("base");
  ASSERT_OK_AND_ASSIGN(vm::ListFilter f, FromProto(list));
  EXPECT_EQ(f.label_selector.at("app"), "x");
  EXPECT_EQ(f.states, (std::vector<vm::VmState>{vm::VmState::kRunning, vm::VmState::kPaused}));
  EXPECT_EQ(f.snapshot_ref, "base");
  list.add_states(v1::VM_STATE_UNSPECIFIED);
  EXPECT_THAT(FromProto(list), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("states")));

  v1::DeleteVmRequest del;
  EXPECT_EQ(DeleteGrace(del).value(), absl::Seconds(5));
  del.mutable_grace_period()->set_seconds(2);
  EXPECT_EQ(DeleteGrace(del).value(), absl::Seconds(2));
  del.mutable_grace_period()->set_seconds(-1);
  EXPECT_THAT(DeleteGrace(del), StatusIs(absl::StatusCode::kInvalidArgument));

  v1::CreateSnapshotRequest snap;
  snap.set_vm_ref("web");
  snap.set_name("s1");
  (*snap.mutable_labels())["x"] = "y";
  snap.set_after(v1::AFTER_SNAPSHOT_STOP);
  ASSERT_OK_AND_ASSIGN(vm::SnapshotRequest sr, FromProto(snap));
  EXPECT_EQ(sr.vm_ref, "web");
  EXPECT_EQ(sr.name, "s1");
  EXPECT_EQ(sr.labels.at("x"), "y");
  EXPECT_EQ(sr.after, vm::AfterSnapshot::kStop);

  v1::CloneSnapshotRequest clone;
  clone.set_snapshot_ref("s1");
  EXPECT_THAT(FromProto(clone), StatusIs(absl::StatusCode::kInvalidArgument, "count must be 1-1024, got 0"));
  clone.set_count(1025);
  EXPECT_THAT(FromProto(clone),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("count must be 1-1024")));
  clone.set_count(8);
  clone.set_memory_backend(v1::MEMORY_BACKEND_FILE);
  clone.set_prefetch_policy(v1::PREFETCH_POLICY_NONE);
  clone.set_name_prefix("c");
  (*clone.mutable_labels())["l"] = "m";
  clone.set_stay_paused(true);
  clone.set_all_or_nothing(true);
  clone.set_parallelism(3);
  ASSERT_OK_AND_ASSIGN(vm::CloneRequest cr, FromProto(clone));
  EXPECT_EQ(cr.snapshot_ref, "s1");
  EXPECT_EQ(cr.count, 8u);
  EXPECT_EQ(cr.backend, vm::MemoryBackend::kFile);
  EXPECT_EQ(cr.policy, vm::ClonePolicy::kNone);
  EXPECT_EQ(cr.name_prefix, "c");
  EXPECT_EQ(cr.labels.at("l"), "m");
  EXPECT_TRUE(cr.stay_paused);
  EXPECT_TRUE(cr.all_or_nothing);
  EXPECT_EQ(cr.parallelism, 3u);
  clone.clear_memory_backend();
  clone.clear_prefetch_policy();
  ASSERT_OK_AND_ASSIGN(cr, FromProto(clone));
  EXPECT_EQ(cr.backend, vm::MemoryBackend::kUffd);
  EXPECT_EQ(cr.policy, vm::ClonePolicy::kAuto);
  EXPECT_TRUE(cr.publish.empty());

  // A network override may add ports; clones keep the snapshot's MAC and
  // network choice.
  clone.mutable_network()->set_enabled(true);
  v1::PortMapping* port = clone.mutable_network()->add_publish();
  port->set_host_port(8080);
  port->set_guest_port(80);
  ASSERT_OK_AND_ASSIGN(cr, FromProto(clone));
  ASSERT_EQ(cr.publish.size(), 1u);
  EXPECT_EQ(cr.publish[0].host_port, 8080);
  EXPECT_EQ(cr.publish[0].guest_port, 80);
  EXPECT_EQ(cr.publish[0].protocol, "tcp");
  // The network choice goes to the manager, which checks it against the
  // snapshot (tests/unit/vm); unset when the request says nothing.
  ASSERT_TRUE(cr.network_enabled.has_value());
  EXPECT_TRUE(*cr.network_enabled);
  v1::CloneSnapshotRequest no_override;
  no_override.set_count(1);
  ASSERT_OK_AND_ASSIGN(vm::CloneRequest plain, FromProto(no_override));
  EXPECT_FALSE(plain.network_enabled.has_value());
  clone.mutable_network()->set_guest_mac("06:00:00:00:00:01");
  EXPECT_THAT(FromProto(clone), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("network.guest_mac")));
}

TEST(ConvertTest, Responses) {
  v1::DeleteVmResponse del;
  ToProto(vm::DeleteResult{"vm-1", true}, &del);
  EXPECT_EQ(del.id(), "vm-1");
  EXPECT_EQ(del.stop_mode(), "forced");
  ToProto(vm::DeleteResult{"vm-2", false}, &del);
  EXPECT_EQ(del.stop_mode(), "graceful");

  v1::DeleteSnapshotResponse ds;
  ToProto(vm::DeleteSnapshotResult{"snap-1", {"vm-1", "vm-2"}}, &ds);
  EXPECT_EQ(ds.id(), "snap-1");
  ASSERT_EQ(ds.stopped_vm_ids_size(), 2);
  EXPECT_EQ(ds.stopped_vm_ids(1), "vm-2");

  vm::CloneResult cr;
  vm::VmInfo ok;
  ok.id = "vm-ok";
  ok.state = vm::VmState::kRunning;
  vm::VmInfo bad;
  bad.id = "vm-bad";
  bad.state = vm::VmState::kFailed;
  bad.error = "load failed";
  cr.clones = {ok, bad};
  cr.total = absl::Milliseconds(900);
  cr.succeeded = 1;
  cr.failed = 1;
  v1::CloneSnapshotResponse resp;
  ToProto(cr, &resp);
  ASSERT_EQ(resp.clones_size(), 2);
  EXPECT_EQ(resp.clones(0).id(), "vm-ok");
  EXPECT_EQ(resp.clones(0).state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(resp.clones(1).state(), v1::VM_STATE_FAILED);
  EXPECT_EQ(resp.clones(1).error(), "load failed");
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(resp.total()), 900);
  EXPECT_EQ(resp.succeeded(), 1u);
  EXPECT_EQ(resp.failed(), 1u);
}

}  // namespace
}  // namespace fcvm::daemon
