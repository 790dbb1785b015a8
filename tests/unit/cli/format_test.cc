// fcvmctl output: tables, listings, summaries and JSON rendered from
// responses built here.

#include "cli/format.h"

#include "cli/top.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace fcvm::cli {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::testing::HasSubstr;
using ::testing::Not;

google::protobuf::Duration Ms(double ms) {
  return TimeUtil::NanosecondsToDuration(static_cast<int64_t>(ms * 1e6));
}

v1::Vm Clone(std::string name, std::string id, v1::VmState state, int pid, double total, double ready,
             double load, double prefetch) {
  v1::Vm vm;
  vm.set_name(std::move(name));
  vm.set_id(std::move(id));
  vm.set_state(state);
  vm.set_pid(pid);
  *vm.mutable_timings()->mutable_total() = Ms(total);
  *vm.mutable_timings()->mutable_process_ready() = Ms(ready);
  *vm.mutable_timings()->mutable_load() = Ms(load);
  if (prefetch >= 0) *vm.mutable_timings()->mutable_prefetch() = Ms(prefetch);
  return vm;
}

TEST(Table, AlignsColumnsWithoutTrailingBlanks) {
  Table t({"NAME", "N", "NOTE"}, {false, true, false});
  t.AddRow({"a", "1", "first"});
  t.AddRow({"longer", "100"});  // missing cell prints empty
  EXPECT_EQ(t.Render(),
            "NAME      N  NOTE\n"
            "a         1  first\n"
            "longer  100\n");
}

TEST(Percentile, NearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // unsorted input
  EXPECT_EQ(Percentile(v, 50), 50);
  EXPECT_EQ(Percentile(v, 99), 99);
  EXPECT_EQ(Percentile(v, 100), 100);
  EXPECT_EQ(Percentile({7}, 50), 7);
  EXPECT_EQ(Percentile({7}, 99), 7);
  EXPECT_EQ(Percentile({1, 2}, 50), 1);
  EXPECT_EQ(Percentile({1, 2}, 99), 2);
  EXPECT_EQ(Percentile({}, 99), 0);
}

TEST(FormatValues, UnitsAndNames) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(512ull << 20), "512 MiB");
  EXPECT_EQ(FormatBytes(3ull << 29), "1.5 GiB");
  EXPECT_EQ(StateName(v1::VM_STATE_RUNNING), "running");
  EXPECT_EQ(PrefetchName(v1::PREFETCH_POLICY_UNSPECIFIED), "auto");
  EXPECT_EQ(EventKindName(v1::Event::KIND_PAGE_SERVER_DROP), "page-server-drop");
  EXPECT_EQ(FormatDuration(Ms(12.345), true), "12.3 ms");
  EXPECT_EQ(FormatDuration(Ms(0), false), "-");
  google::protobuf::Timestamp ts;
  ts.set_seconds(1795776901);  // 2026-11-27T10:55:01Z
  ts.set_nanos(123000000);
  EXPECT_EQ(FormatTime(ts), "2026-11-27T10:55:01.123Z");
  absl::Time now = absl::FromUnixSeconds(1795776901);
  EXPECT_EQ(FormatAge(ts, now + absl::Seconds(42)), "42s");
  EXPECT_EQ(FormatAge(ts, now + absl::Minutes(5)), "5m");
  EXPECT_EQ(FormatAge(ts, now + absl::Hours(72)), "3d");
  EXPECT_EQ(FormatAge(google::protobuf::Timestamp(), now), "-");
}

TEST(FormatCloneResult, TableWithTimingsAndSummary) {
  v1::CloneSnapshotResponse resp;
  *resp.add_clones() = Clone("w-0", "vm-000000000001", v1::VM_STATE_RUNNING, 101, 100, 20, 30.5, 10);
  *resp.add_clones() = Clone("w-1", "vm-000000000002", v1::VM_STATE_RUNNING, 102, 120, 25, 40, -1);
  v1::Vm failed = Clone("w-2", "", v1::VM_STATE_FAILED, 0, 5, 5, 0, -1);
  failed.set_error("load snapshot: firecracker exited with 1");
  *resp.add_clones() = failed;
  *resp.mutable_total() = Ms(130);
  resp.set_succeeded(2);
  resp.set_failed(1);

  EXPECT_EQ(FormatCloneResult(resp),
            "NAME  ID               STATE    PID  TOTAL_MS  READY_MS  LOAD_MS  PREFETCH_MS  ERROR\n"
            "w-0   vm-000000000001  running  101     100.0      20.0     30.5         10.0\n"
            "w-1   vm-000000000002  running  102     120.0      25.0     40.0            -\n"
            "w-2   -                failed     -       5.0       5.0      0.0            -  "
            "load snapshot: firecracker exited with 1\n"
            "2 succeeded, 1 failed in 130.0 ms; clone total p50 100.0 ms, p99 120.0 ms\n");
}

TEST(FormatForkResult, ForksThenThePauseAndTheLayer) {
  v1::ForkVmResponse resp;
  *resp.add_forks() = Clone("api-fork-0", "vm-000000000001", v1::VM_STATE_RUNNING, 101, 50, 0, 11.2, -1);
  *resp.mutable_total() = Ms(90);
  resp.set_succeeded(1);
  resp.set_kind("diff");
  *resp.mutable_source_pause() = Ms(31.4);
  resp.set_written_bytes(2 << 20);
  resp.mutable_snapshot()->set_id("snap-00000000000f");
  resp.mutable_snapshot()->set_name("api-fork-x");
  resp.mutable_snapshot()->set_memory_layers(2);
  const std::string out = FormatForkResult(resp);
  EXPECT_THAT(out, HasSubstr("api-fork-0  vm-000000000001  running  101      50.0"));
  EXPECT_THAT(out, HasSubstr("1 succeeded, 0 failed in 90.0 ms"));
  EXPECT_THAT(out, HasSubstr("source paused 31.4 ms: diff snapshot api-fork-x (snap-00000000000f), 2.0 MiB "
                             "written, 2 memory layer(s)\n"));
}

TEST(FormatCloneResult, PercentilesOverManyClonesAndNoErrorColumn) {
  v1::CloneSnapshotResponse resp;
  for (int i = 1; i <= 100; ++i) {
    *resp.add_clones() =
        Clone(absl::StrCat("c-", i), absl::StrCat("vm-", i), v1::VM_STATE_RUNNING, i, i, 1, 1, -1);
  }
  resp.set_succeeded(100);
  *resp.mutable_total() = Ms(250);
  const std::string out = FormatCloneResult(resp);
  EXPECT_THAT(out, Not(HasSubstr("ERROR")));
  EXPECT_THAT(out, HasSubstr("100 succeeded, 0 failed in 250.0 ms; clone total p50 50.0 ms, p99 99.0 ms\n"));
}

TEST(FormatCloneResult, AllFailedHasNoPercentiles) {
  v1::CloneSnapshotResponse resp;
  v1::Vm vm;
  vm.set_name("x-0");
  vm.set_state(v1::VM_STATE_FAILED);
  vm.set_error("boom");
  *resp.add_clones() = vm;
  resp.set_failed(1);
  EXPECT_THAT(FormatCloneResult(resp),
              HasSubstr("0 succeeded, 1 failed in 0.0 ms; clone total p50 -, p99 -\n"));
}

TEST(FormatVm, TableSummaryAndDetails) {
  v1::Vm vm;
  vm.set_id("vm-0123456789ab");
  vm.set_name("web-1");
  vm.set_state(v1::VM_STATE_RUNNING);
  vm.set_pid(4242);
  vm.set_console_log_path("/var/lib/fcvm/vms/vm-0123456789ab/console.log");
  (*vm.mutable_labels())["tier"] = "front";
  (*vm.mutable_labels())["app"] = "web";
  vm.set_snapshot_id("snap-00000000000a");
  vm.set_memory_backend(v1::MEMORY_BACKEND_FILE);
  vm.mutable_created_at()->set_seconds(1000);
  v1::VmConfig* c = vm.mutable_config();
  c->set_kernel_path("/k/vmlinux");
  c->set_vcpu_count(2);
  c->set_memory_mib(256);
  v1::Drive* d = c->add_drives();
  d->set_drive_id("rootfs");
  d->set_path("/img/root.ext4");
  d->set_is_root_device(true);
  d->set_read_only(true);
  *vm.mutable_timings()->mutable_total() = Ms(87.25);

  v1::ListVmsResponse list;
  *list.add_vms() = vm;
  EXPECT_EQ(FormatVmTable(list, absl::FromUnixSeconds(1000 + 90)),
            "ID               NAME   STATE    BACKEND  SNAPSHOT           PID   IP  CPU  RSS  FAULTS  AGE\n"
            "vm-0123456789ab  web-1  running  file     snap-00000000000a  4242  -     -    -       -  1m\n");
  v1::ListVmsResponse networked = list;
  networked.mutable_vms(0)->mutable_network()->set_host_ip("10.200.0.2");
  EXPECT_EQ(
      FormatVmTable(networked, absl::FromUnixSeconds(1000 + 90)),
      "ID               NAME   STATE    BACKEND  SNAPSHOT           PID   IP          CPU  RSS  FAULTS  AGE\n"
      "vm-0123456789ab  web-1  running  file     snap-00000000000a  4242  10.200.0.2    -    -       -  "
      "1m\n");

  EXPECT_EQ(FormatVmSummary(vm),
            "id:          vm-0123456789ab\n"
            "name:        web-1\n"
            "state:       running\n"
            "pid:         4242\n"
            "console log: /var/lib/fcvm/vms/vm-0123456789ab/console.log\n");

  const std::string details = FormatVmDetails(vm, absl::FromUnixSeconds(1000 + 90));
  EXPECT_THAT(details, HasSubstr("labels:         app=web,tier=front\n"));
  EXPECT_THAT(details, HasSubstr("memory backend: file\n"));
  EXPECT_THAT(details, HasSubstr("created:        1970-01-01T00:16:40.000Z (1m ago)\n"));
  EXPECT_THAT(details, HasSubstr("config:\n  kernel:    /k/vmlinux\n"));
  EXPECT_THAT(details, HasSubstr("  drives:    rootfs=/img/root.ext4 (root,ro)\n"));
  EXPECT_THAT(details, HasSubstr("  memory:    256 MiB\n"));
  EXPECT_THAT(details, HasSubstr("timings:\n  total:         87.2 ms\n"));
  EXPECT_THAT(details, HasSubstr("  prefetch:      -\n"));
  EXPECT_THAT(details, Not(HasSubstr("network:\n"))) << "no network status section without a network";
  EXPECT_THAT(details, Not(HasSubstr("vsock")));
  vm.set_vsock_uds_path("/var/lib/fcvm/vms/vm-0123456789ab/vsock.sock");
  vm.mutable_config()->mutable_vsock()->set_enabled(true);
  EXPECT_THAT(FormatVmDetails(vm, absl::FromUnixSeconds(1090)),
              HasSubstr("vsock:          /var/lib/fcvm/vms/vm-0123456789ab/vsock.sock (guest cid 3)\n"));
}

TEST(FormatVm, FailedVmShowsError) {
  v1::Vm vm;
  vm.set_id("vm-1");
  vm.set_state(v1::VM_STATE_FAILED);
  vm.set_error("kernel not found: /nope");
  EXPECT_THAT(FormatVmSummary(vm), HasSubstr("error:       kernel not found: /nope\n"));
  EXPECT_THAT(FormatVmSummary(vm), HasSubstr("pid:         -\n"));
}

TEST(FormatSnapshot, TableAndDetails) {
  v1::ListSnapshotsResponse list;
  v1::Snapshot* s = list.add_snapshots();
  s->set_id("snap-00000000000a");
  s->set_name("base");
  s->set_source_vm_id("vm-0123456789ab");
  s->set_memory_bytes(256ull << 20);
  s->set_working_set_pages(1200);
  s->set_clone_count(3);
  *s->mutable_create_duration() = Ms(840);
  EXPECT_EQ(FormatSnapshotTable(list, absl::UnixEpoch()),
            "ID                 NAME  SOURCE            MEMORY  WORKING-SET  CLONES  AGE\n"
            "snap-00000000000a  base  vm-0123456789ab  256 MiB   1200 pages       3  -\n");
  const std::string details = FormatSnapshotDetails(*s, absl::UnixEpoch());
  EXPECT_THAT(details, HasSubstr("create time:    840.0 ms\n"));
  EXPECT_THAT(details, HasSubstr("working set:    1200 pages\n"));
  EXPECT_THAT(details, HasSubstr("made on: not recorded"));
  v1::SnapshotHost* host = s->mutable_host();
  host->set_firecracker_version("1.14.2");
  host->set_snapshot_format_version("8.0.0");
  host->set_cpu_vendor("AuthenticAMD");
  host->set_cpu_family(25);
  host->set_cpu_model(1);
  host->set_cpu_model_name("AMD EPYC");
  host->add_cpu_flags("avx");
  host->add_cpu_flags("avx2");
  host->set_page_size(4096);
  const std::string with_host = FormatSnapshotDetails(*s, absl::UnixEpoch());
  EXPECT_THAT(with_host, HasSubstr("  snapshot format: 8.0.0\n"));
  EXPECT_THAT(with_host,
              HasSubstr("  cpu:             AuthenticAMD family 25 model 1 stepping 0 (AMD EPYC)\n"));
  EXPECT_THAT(with_host, HasSubstr("  cpu flags:       avx avx2\n"));

  v1::DeleteSnapshotResponse del;
  del.set_id("snap-00000000000a");
  del.add_stopped_vm_ids("vm-1");
  del.add_stopped_vm_ids("vm-2");
  EXPECT_EQ(FormatDeleteSnapshot(del), "deleted snap-00000000000a\nstopped clones: vm-1, vm-2\n");

  v1::DeleteVmResponse vdel;
  vdel.set_id("vm-1");
  vdel.set_stop_mode("forced");
  EXPECT_EQ(FormatDeleteVm(vdel), "deleted vm-1 (forced)\n");
}

// Issue 14: the page size of a snapshot and of a VM's config.
TEST(FormatSnapshot, PageSize) {
  v1::Snapshot s;
  s.set_memory_page_size(2 << 20);
  s.mutable_config()->set_huge_pages(v1::HUGE_PAGES_2M);
  std::string details = FormatSnapshotDetails(s, absl::UnixEpoch());
  EXPECT_THAT(details, HasSubstr("page size:      2 MiB (huge pages: UFFD clones only)\n"));
  EXPECT_THAT(details, HasSubstr("  page size: 2 MiB (huge pages)\n"));
  s.set_memory_page_size(4096);
  s.mutable_config()->set_huge_pages(v1::HUGE_PAGES_NONE);
  details = FormatSnapshotDetails(s, absl::UnixEpoch());
  EXPECT_THAT(details, HasSubstr("page size:      4 KiB\n"));
  EXPECT_THAT(details, HasSubstr("  page size: 4 KiB\n"));
}

TEST(FormatPageServerStats, SessionsAndTotals) {
  v1::PageServerStats stats;
  stats.set_loop_threads(2);
  stats.set_dropped_sessions(1);
  v1::CloneSessionStats* s = stats.add_sessions();
  s->set_vm_id("vm-1");
  s->set_snapshot_id("snap-a");
  s->set_peer_pid(777);
  s->set_policy(v1::PREFETCH_POLICY_PREFETCH);
  s->mutable_stats()->set_faults(10);
  s->mutable_stats()->set_pages_copied(8);
  s->mutable_stats()->set_zero_pages(2);
  s->mutable_stats()->set_prefetched_pages(300);
  s->mutable_stats()->set_latency_p50_us(3.25);
  s->mutable_stats()->set_latency_p99_us(41);
  v1::FaultStats* t = stats.mutable_total();
  t->set_faults(10);
  t->set_pages_copied(8);
  t->set_zero_pages(2);
  t->set_prefetched_pages(300);
  t->set_bytes_copied(8 * 4096);
  t->set_latency_p50_us(3.25);
  t->set_latency_p99_us(41);
  EXPECT_EQ(FormatPageServerStats(stats),
            "VM     SNAPSHOT  PID  POLICY    FAULTS  COPIED  ZERO  PREFETCHED  P50_US  P99_US\n"
            "vm-1   snap-a    777  prefetch      10       8     2         300     3.2    41.0\n"
            "TOTAL                               10       8     2         300     3.2    41.0\n"
            "1 sessions on 2 loop threads, 32 KiB copied, 0 EAGAIN retries, 1 dropped sessions\n");
}

TEST(FormatEvent, OneLinePerKind) {
  v1::Event e;
  e.set_kind(v1::Event::KIND_VM_STATE);
  e.mutable_time()->set_seconds(1795776901);
  e.set_vm_id("vm-1");
  e.set_previous_state(v1::VM_STATE_RUNNING);
  e.set_state(v1::VM_STATE_PAUSED);
  e.set_message("paused by request");
  EXPECT_EQ(FormatEvent(e),
            "2026-11-27T10:55:01.000Z  vm-state          vm-1  running -> paused  paused by request");

  v1::Event snap;
  snap.set_kind(v1::Event::KIND_SNAPSHOT_CREATED);
  snap.mutable_time()->set_seconds(1795776901);
  snap.set_vm_id("vm-1");
  snap.set_snapshot_id("snap-a");
  EXPECT_EQ(FormatEvent(snap), "2026-11-27T10:55:01.000Z  snapshot-created  vm-1/snap-a");
  snap.set_sequence(42);
  EXPECT_EQ(FormatEvent(snap), "2026-11-27T10:55:01.000Z  #42  snapshot-created  vm-1/snap-a");
}

TEST(ToJson, ProtoFieldNamesAndDefaults) {
  v1::Vm vm;
  vm.set_id("vm-1");
  const std::string pretty = ToJson(vm, true);
  EXPECT_THAT(pretty, HasSubstr("\"console_log_path\": \"\""));
  EXPECT_THAT(pretty, HasSubstr("\"pid\": 0"));
  EXPECT_THAT(pretty, HasSubstr("\"state\": \"VM_STATE_UNSPECIFIED\""));
  const std::string line = ToJson(vm, false);
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  EXPECT_EQ(line.back(), '\n');
}

TEST(FormatTop, Seconds) {
  EXPECT_EQ(FormatSeconds(0), "0.00s");
  EXPECT_EQ(FormatSeconds(0.35), "0.35s");
  EXPECT_EQ(FormatSeconds(12.44), "12.4s");
  EXPECT_EQ(FormatSeconds(303), "5m03s");
  EXPECT_EQ(FormatSeconds(7620), "2h07m");
  EXPECT_EQ(FormatSeconds(273600), "3d04h");
  EXPECT_EQ(FormatSeconds(-1), "0.00s");
}

v1::Vm WithUsage(const std::string& id, const std::string& name, int64_t at_s, int64_t cpu_ms,
                 uint64_t rss_mib, uint64_t faults) {
  v1::Vm vm;
  vm.set_id(id);
  vm.set_name(name);
  vm.set_state(v1::VM_STATE_RUNNING);
  v1::VmUsage* u = vm.mutable_usage();
  *u->mutable_sampled_at() = TimeUtil::SecondsToTimestamp(at_s);
  *u->mutable_cpu_time() = TimeUtil::MillisecondsToDuration(cpu_ms);
  u->set_rss_bytes(rss_mib << 20);
  u->set_page_faults_served(faults);
  return vm;
}

TEST(FormatTop, RatesBetweenSamplesAndSorting) {
  v1::ListVmsResponse before, now;
  *before.add_vms() = WithUsage("vm-a", "a", 100, 1000, 10, 0);
  *before.add_vms() = WithUsage("vm-b", "b", 100, 1000, 50, 0);
  // Two seconds later: a used 1 s of CPU (50 %), b 3 s (150 %: two vCPUs),
  // c is new (no rate yet), d has no process.
  *now.add_vms() = WithUsage("vm-a", "a", 102, 2000, 10, 400);
  *now.add_vms() = WithUsage("vm-b", "b", 102, 4000, 50, 0);
  *now.add_vms() = WithUsage("vm-c", "c", 102, 9000, 99, 0);
  v1::Vm d;
  d.set_id("vm-d");
  d.set_name("d");
  d.set_state(v1::VM_STATE_STOPPED);
  *now.add_vms() = d;

  std::vector<TopRow> cpu = ComputeTop(before, now, TopSort::kCpu);
  ASSERT_EQ(cpu.size(), 4u);
  EXPECT_EQ(cpu[0].name, "b");
  EXPECT_DOUBLE_EQ(*cpu[0].cpu_percent, 150);
  EXPECT_EQ(cpu[1].name, "a");
  EXPECT_DOUBLE_EQ(*cpu[1].cpu_percent, 50);
  EXPECT_DOUBLE_EQ(*cpu[1].faults_per_second, 200);
  EXPECT_EQ(cpu[2].name, "c");  // no rate: after those with one
  EXPECT_FALSE(cpu[2].cpu_percent.has_value());
  EXPECT_EQ(cpu[3].name, "d");
  EXPECT_FALSE(cpu[3].has_usage);

  std::vector<TopRow> rss = ComputeTop(before, now, TopSort::kRss);
  EXPECT_EQ(rss[0].name, "c");
  EXPECT_EQ(rss[1].name, "b");
  std::vector<TopRow> faults = ComputeTop(before, now, TopSort::kFaults);
  EXPECT_EQ(faults[0].name, "a");
  std::vector<TopRow> names = ComputeTop(now, now, TopSort::kName);
  EXPECT_EQ(names[0].name, "a");
  EXPECT_EQ(names[3].name, "d");

  std::string frame = FormatTop(cpu, absl::FromUnixSeconds(102), /*pss=*/false);
  EXPECT_THAT(frame, HasSubstr(", 4 VMs: 3 running, 0 paused, 1 other; CPU 200.0 %, RSS 159 MiB\n\n"));
  EXPECT_THAT(frame, HasSubstr("\nvm-c  c     running      -     9.00s  99 MiB       0         -   0.00s\n"));
  EXPECT_THAT(frame, HasSubstr("\nvm-d  d     stopped      -         -       -       -         -       -\n"));
  EXPECT_THAT(FormatTop(cpu, absl::FromUnixSeconds(102), /*pss=*/true), HasSubstr("  RSS  PSS  FAULTS"));
}

}  // namespace
}  // namespace fcvm::cli
