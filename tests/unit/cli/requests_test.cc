// fcvmctl argument parsing: what each command line turns into, and the
// one-line errors for what it rejects.

#include "cli/requests.h"

#include <unistd.h>

#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::cli {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

// A parser holding one global option, as RunCli's does.
struct Parser {
  bool json = false;
  FlagParser flags{"fcvmctl test"};
  Parser() { flags.Bool("json", &json, "json"); }
};

TEST(ParseDrive, IdPathAndOptions) {
  ASSERT_OK_AND_ASSIGN(v1::Drive d, ParseDrive("rootfs=/x.img,ro,root"));
  EXPECT_EQ(d.drive_id(), "rootfs");
  EXPECT_EQ(d.path(), "/x.img");
  EXPECT_TRUE(d.read_only());
  EXPECT_TRUE(d.is_root_device());

  ASSERT_OK_AND_ASSIGN(v1::Drive data, ParseDrive("data_1=/var/data.img"));
  EXPECT_EQ(data.drive_id(), "data_1");
  EXPECT_EQ(data.path(), "/var/data.img");
  EXPECT_FALSE(data.read_only());
  EXPECT_FALSE(data.is_root_device());
}

TEST(ParseDrive, RelativePathIsMadeAbsolute) {
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_OK_AND_ASSIGN(v1::Drive d, ParseDrive("rootfs=./img/root.ext4"));
  EXPECT_EQ(d.path(), std::string(cwd) + "/img/root.ext4");
}

TEST(ParseDrive, RejectsBadSyntax) {
  EXPECT_THAT(ParseDrive("rootfs"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no '='")));
  EXPECT_THAT(ParseDrive("=/x.img"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty drive id")));
  EXPECT_THAT(ParseDrive("rootfs="), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty path")));
  EXPECT_THAT(ParseDrive("rootfs=/x.img,rw,boot"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown drive option 'rw'")));
  EXPECT_THAT(ParseDrive("root fs=/x.img"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("drive id 'root fs'")));
  EXPECT_THAT(ParseDrive(std::string(65, 'a') + "=/x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("longer than 64")));
}

TEST(ParseLabels, PairsAndErrors) {
  ASSERT_OK_AND_ASSIGN(auto labels, ParseLabels({"app=web", "tier=", "expr=a=b"}, "--label"));
  EXPECT_THAT(labels, ElementsAre(Pair("app", "web"), Pair("expr", "a=b"), Pair("tier", "")));
  EXPECT_THAT(ParseLabels({"app"}, "--label"),
              StatusIs(absl::StatusCode::kInvalidArgument, "--label: 'app' is not KEY=VALUE"));
  EXPECT_THAT(ParseLabels({"=web"}, "--label"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty key")));
  EXPECT_THAT(ParseLabels({"a=1", "a=2"}, "--label"),
              StatusIs(absl::StatusCode::kInvalidArgument, "--label: key 'a' given twice"));
}

TEST(ParseEnums, AcceptKnownNamesCaseInsensitively) {
  EXPECT_EQ(*ParseVmState("Running"), v1::VM_STATE_RUNNING);
  EXPECT_EQ(*ParseVmState("failed"), v1::VM_STATE_FAILED);
  EXPECT_EQ(*ParseMemoryBackend("file"), v1::MEMORY_BACKEND_FILE);
  EXPECT_EQ(*ParsePrefetchPolicy("record"), v1::PREFETCH_POLICY_RECORD);
  EXPECT_EQ(*ParseAfterSnapshot("pause"), v1::AFTER_SNAPSHOT_STAY_PAUSED);
  EXPECT_THAT(ParseMemoryBackend("foo"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  "unknown memory backend 'foo' (want uffd or file)"));
  EXPECT_THAT(ParsePrefetchPolicy("eager"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                     HasSubstr("(want auto, none, record or prefetch)")));
}

TEST(ParseRunVm, BuildsTheWholeRequest) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(v1::RunVmRequest req, ParseRunVm(p.flags, {"--kernel",
                                                                  "/k/vmlinux",
                                                                  "--initrd=/k/initrd",
                                                                  "--boot-args",
                                                                  "console=ttyS0 quiet",
                                                                  "--vcpus",
                                                                  "2",
                                                                  "--memory-mib",
                                                                  "512",
                                                                  "--drive",
                                                                  "rootfs=/x.img,ro,root",
                                                                  "--drive",
                                                                  "data=/d.img",
                                                                  "--name",
                                                                  "web-1",
                                                                  "--label",
                                                                  "app=web",
                                                                  "--label",
                                                                  "tier=front",
                                                                  "--net",
                                                                  "--json"}));
  EXPECT_TRUE(p.json) << "global options still parse after the command";
  EXPECT_EQ(req.name(), "web-1");
  EXPECT_THAT(req.labels(), UnorderedElementsAre(Pair("app", "web"), Pair("tier", "front")));
  const v1::VmConfig& c = req.config();
  EXPECT_EQ(c.kernel_path(), "/k/vmlinux");
  EXPECT_EQ(c.initrd_path(), "/k/initrd");
  EXPECT_EQ(c.boot_args(), "console=ttyS0 quiet");
  EXPECT_EQ(c.vcpu_count(), 2u);
  EXPECT_EQ(c.memory_mib(), 512u);
  ASSERT_EQ(c.drives_size(), 2);
  EXPECT_EQ(c.drives(0).drive_id(), "rootfs");
  EXPECT_TRUE(c.drives(0).is_root_device());
  EXPECT_TRUE(c.drives(0).read_only());
  EXPECT_EQ(c.drives(1).path(), "/d.img");
  EXPECT_FALSE(c.drives(1).read_only());
  EXPECT_TRUE(c.network().enabled());
}

TEST(ParseRunVm, DefaultsAndErrors) {
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::RunVmRequest req, ParseRunVm(p.flags, {"--kernel", "/k"}));
    EXPECT_EQ(req.config().vcpu_count(), 1u);
    EXPECT_EQ(req.config().memory_mib(), 128u);
    EXPECT_FALSE(req.config().network().enabled());
    EXPECT_TRUE(req.name().empty());
  }
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  const Case cases[] = {
      {{}, "--kernel is required"},
      {{"--kernel", "/k", "--vcpus", "0"}, "--vcpus: 0 is out of range (1-32)"},
      {{"--kernel", "/k", "--vcpus", "33"}, "--vcpus: 33 is out of range (1-32)"},
      {{"--kernel", "/k", "--memory-mib", "8"}, "--memory-mib: 8 is out of range (at least 16)"},
      {{"--kernel", "/k", "--drive", "rootfs"}, "--drive: 'rootfs': no '='"},
      {{"--kernel", "/k", "--drive", "a=/a", "--drive", "a=/b"}, "--drive: drive id 'a' given twice"},
      {{"--kernel", "/k", "--drive", "a=/a,root", "--drive", "b=/b,root"}, "more than one drive marked root"},
      {{"--kernel", "/k", "--label", "app"}, "--label: 'app' is not KEY=VALUE"},
      {{"--kernel", "/k", "extra"}, "unexpected argument 'extra'"},
      {{"--kernel", "/k", "--bogus"}, "unknown option '--bogus'"},
  };
  for (const Case& c : cases) {
    Parser p;
    EXPECT_THAT(ParseRunVm(p.flags, c.args), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.error)))
        << ::testing::PrintToString(c.args);
  }
}

TEST(ParseRunVm, HelpSkipsValidation) {
  Parser p;
  EXPECT_OK(ParseRunVm(p.flags, {"--help"}));
  EXPECT_TRUE(p.flags.help_requested());
  EXPECT_THAT(p.flags.Help(), HasSubstr("--drive ID=PATH[,ro][,root]"));
  EXPECT_THAT(p.flags.Help(), HasSubstr("--kernel PATH"));
}

TEST(ParseListVms, Filters) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(v1::ListVmsRequest req,
                       ParseListVms(p.flags, {"--label", "app=web", "--state", "running", "--state", "PAUSED",
                                              "--snapshot", "base"}));
  EXPECT_THAT(req.label_selector(), UnorderedElementsAre(Pair("app", "web")));
  EXPECT_THAT(req.states(), ElementsAre(v1::VM_STATE_RUNNING, v1::VM_STATE_PAUSED));
  EXPECT_EQ(req.snapshot_ref(), "base");

  Parser bad;
  EXPECT_THAT(
      ParseListVms(bad.flags, {"--state", "sleeping"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--state: unknown VM state 'sleeping'")));
  Parser extra;
  EXPECT_THAT(ParseListVms(extra.flags, {"web-1"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'web-1'")));
}

TEST(ParseRefCommands, OneRefExactly) {
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::GetVmRequest req, ParseGetVm(p.flags, {"web-1"}));
    EXPECT_EQ(req.ref(), "web-1");
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::PauseVmRequest req, ParsePauseVm(p.flags, {"vm-0123456789ab"}));
    EXPECT_EQ(req.ref(), "vm-0123456789ab");
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::ResumeVmRequest req, ParseResumeVm(p.flags, {"web-1"}));
    EXPECT_EQ(req.ref(), "web-1");
  }
  Parser missing;
  EXPECT_THAT(ParseGetVm(missing.flags, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "missing REF (usage: fcvmctl get REF)"));
  Parser extra;
  EXPECT_THAT(ParsePauseVm(extra.flags, {"a", "b"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'b'")));
}

TEST(ParseDeleteVms, SeveralRefsForceAndGrace) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(auto reqs, ParseDeleteVms(p.flags, {"a", "b", "a", "--grace", "1500ms"}));
  ASSERT_EQ(reqs.size(), 2u) << "a repeated ref is deleted once";
  EXPECT_EQ(reqs[0].ref(), "a");
  EXPECT_EQ(reqs[1].ref(), "b");
  EXPECT_FALSE(reqs[0].force());
  ASSERT_TRUE(reqs[1].has_grace_period());
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToMilliseconds(reqs[1].grace_period()), 1500);

  Parser force;
  ASSERT_OK_AND_ASSIGN(auto forced, ParseDeleteVms(force.flags, {"--force", "x"}));
  ASSERT_EQ(forced.size(), 1u);
  EXPECT_TRUE(forced[0].force());
  EXPECT_FALSE(forced[0].has_grace_period()) << "no --grace: fcvmd's default";

  Parser zero;
  ASSERT_OK_AND_ASSIGN(auto zeroed, ParseDeleteVms(zero.flags, {"--grace=0s", "x"}));
  EXPECT_TRUE(zeroed[0].has_grace_period()) << "an explicit 0s is sent, not dropped";

  Parser none;
  EXPECT_THAT(ParseDeleteVms(none.flags, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing REF")));
  Parser bad;
  EXPECT_THAT(ParseDeleteVms(bad.flags, {"--grace", "soon", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--grace: not a duration: 'soon'")));
  Parser both;
  EXPECT_THAT(ParseDeleteVms(both.flags, {"--grace", "1s", "--force", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--force")));
}

TEST(ParseSnapshotCommands, CreateListGetRm) {
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(
        v1::CreateSnapshotRequest req,
        ParseCreateSnapshot(p.flags, {"web-1", "--name", "base", "--label", "v=1", "--after", "stop"}));
    EXPECT_EQ(req.vm_ref(), "web-1");
    EXPECT_EQ(req.name(), "base");
    EXPECT_THAT(req.labels(), UnorderedElementsAre(Pair("v", "1")));
    EXPECT_EQ(req.after(), v1::AFTER_SNAPSHOT_STOP);
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::CreateSnapshotRequest req, ParseCreateSnapshot(p.flags, {"web-1"}));
    EXPECT_EQ(req.after(), v1::AFTER_SNAPSHOT_RESUME);
  }
  {
    Parser p;
    EXPECT_THAT(ParseCreateSnapshot(p.flags, {"web-1", "--after", "later"}),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         "--after: unknown action 'later' (want resume, pause or stop)"));
  }
  {
    Parser p;
    EXPECT_THAT(ParseCreateSnapshot(p.flags, {}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing VM_REF")));
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::ListSnapshotsRequest req, ParseListSnapshots(p.flags, {"--label", "v=1"}));
    EXPECT_THAT(req.label_selector(), UnorderedElementsAre(Pair("v", "1")));
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::GetSnapshotRequest req, ParseGetSnapshot(p.flags, {"base"}));
    EXPECT_EQ(req.ref(), "base");
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(v1::DeleteSnapshotRequest req, ParseDeleteSnapshot(p.flags, {"base", "--force"}));
    EXPECT_EQ(req.ref(), "base");
    EXPECT_TRUE(req.force());
  }
}

TEST(ParseCloneSnapshot, AllOptions) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(
      v1::CloneSnapshotRequest req,
      ParseCloneSnapshot(
          p.flags, {"base", "--count", "100", "--backend", "uffd", "--prefetch", "prefetch", "--name-prefix",
                    "w", "--label", "batch=7", "--stay-paused", "--all-or-nothing", "--parallelism", "8"}));
  EXPECT_EQ(req.snapshot_ref(), "base");
  EXPECT_EQ(req.count(), 100u);
  EXPECT_EQ(req.memory_backend(), v1::MEMORY_BACKEND_UFFD);
  EXPECT_EQ(req.prefetch_policy(), v1::PREFETCH_POLICY_PREFETCH);
  EXPECT_EQ(req.name_prefix(), "w");
  EXPECT_THAT(req.labels(), UnorderedElementsAre(Pair("batch", "7")));
  EXPECT_TRUE(req.stay_paused());
  EXPECT_TRUE(req.all_or_nothing());
  EXPECT_EQ(req.parallelism(), 8u);

  Parser d;
  ASSERT_OK_AND_ASSIGN(v1::CloneSnapshotRequest defaults, ParseCloneSnapshot(d.flags, {"base"}));
  EXPECT_EQ(defaults.count(), 1u);
  EXPECT_EQ(defaults.memory_backend(), v1::MEMORY_BACKEND_UFFD);
  EXPECT_EQ(defaults.prefetch_policy(), v1::PREFETCH_POLICY_AUTO);
  EXPECT_EQ(defaults.parallelism(), 0u);
  EXPECT_FALSE(defaults.stay_paused());
}

TEST(ParseForkVm, OptionsAndErrors) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(
      v1::ForkVmRequest req,
      ParseForkVm(p.flags, {"api-7", "--count", "4", "--name-prefix", "f", "--snapshot-name", "api-7-now",
                            "--label", "k=v", "--stay-paused", "--parallelism", "2", "--prefetch", "none"}));
  EXPECT_EQ(req.vm_ref(), "api-7");
  EXPECT_EQ(req.count(), 4u);
  EXPECT_EQ(req.name_prefix(), "f");
  EXPECT_EQ(req.snapshot_name(), "api-7-now");
  EXPECT_THAT(req.labels(), UnorderedElementsAre(Pair("k", "v")));
  EXPECT_TRUE(req.stay_paused());
  EXPECT_EQ(req.parallelism(), 2u);
  EXPECT_EQ(req.prefetch_policy(), v1::PREFETCH_POLICY_NONE);
  EXPECT_EQ(req.memory_backend(), v1::MEMORY_BACKEND_UFFD);
  Parser none;
  EXPECT_THAT(ParseForkVm(none.flags, {}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("VM_REF")));
  Parser big;
  EXPECT_THAT(ParseForkVm(big.flags, {"api-7", "--count", "2000"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--count")));
  Parser bad;
  EXPECT_THAT(ParseForkVm(bad.flags, {"api-7", "--backend", "file"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--backend")));
}

TEST(ParseMetadata, FilesForRunCloneAndSet) {
  char dir_template[] = "/tmp/fcvm-cli-md-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string file = std::string(dir_template) + "/m.json";
  ASSERT_OK(WriteFileAtomic(file, R"({"task": 1})"));
  Parser r;
  ASSERT_OK_AND_ASSIGN(v1::RunVmRequest run,
                       ParseRunVm(r.flags, {"--kernel", "/k", "--metadata", file, "--mmds-version", "v1"}));
  EXPECT_EQ(run.metadata_json(), R"({"task": 1})");
  EXPECT_EQ(run.config().mmds_version(), "V1");
  Parser bad_version;
  EXPECT_THAT(ParseRunVm(bad_version.flags, {"--kernel", "/k", "--mmds-version", "v3"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--mmds-version")));
  Parser c;
  ASSERT_OK_AND_ASSIGN(v1::CloneSnapshotRequest clone,
                       ParseCloneSnapshot(c.flags, {"base", "--metadata", file}));
  EXPECT_EQ(clone.metadata_json(), R"({"task": 1})");
  Parser missing;
  EXPECT_THAT(ParseCloneSnapshot(missing.flags, {"base", "--metadata", file + ".no"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("--metadata")));
  Parser s;
  ASSERT_OK_AND_ASSIGN(v1::SetVmMetadataRequest set, ParseSetVmMetadata(s.flags, {"vm-1", file}));
  EXPECT_EQ(set.ref(), "vm-1");
  EXPECT_EQ(set.json(), R"({"task": 1})");
  Parser s2;
  EXPECT_THAT(ParseSetVmMetadata(s2.flags, {"vm-1"}), StatusIs(absl::StatusCode::kInvalidArgument));
  Parser g;
  ASSERT_OK_AND_ASSIGN(v1::GetVmMetadataRequest get, ParseGetVmMetadata(g.flags, {"vm-1"}));
  EXPECT_EQ(get.ref(), "vm-1");
  (void)RemoveTree(dir_template);
}

TEST(ParseVsock, RunFlagsAndCommand) {
  Parser r;
  ASSERT_OK_AND_ASSIGN(v1::RunVmRequest run,
                       ParseRunVm(r.flags, {"--kernel", "/k", "--vsock", "--vsock-cid", "7"}));
  EXPECT_TRUE(run.config().vsock().enabled());
  EXPECT_EQ(run.config().vsock().guest_cid(), 7u);
  Parser no_vsock;
  EXPECT_THAT(ParseRunVm(no_vsock.flags, {"--kernel", "/k", "--vsock-cid", "7"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--vsock")));
  Parser v;
  ASSERT_OK_AND_ASSIGN(VsockRequest req, ParseVsock(v.flags, {"web", "5000", "--connect-timeout", "2s"}));
  EXPECT_EQ(req.vm.ref(), "web");
  EXPECT_EQ(req.port, 5000u);
  EXPECT_EQ(req.connect_timeout, absl::Seconds(2));
  Parser bad_port;
  EXPECT_THAT(ParseVsock(bad_port.flags, {"web", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("PORT")));
  Parser missing;
  EXPECT_THAT(ParseVsock(missing.flags, {"web"}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ParseCloneSnapshot, RejectsBadValuesNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  const Case cases[] = {
      {{"base", "--backend", "foo"}, "--backend: unknown memory backend 'foo' (want uffd or file)"},
      {{"base", "--prefetch", "eager"}, "--prefetch: unknown prefetch policy 'eager'"},
      {{"base", "--count", "0"}, "--count: 0 is out of range (1-1024)"},
      {{"base", "--count", "1025"}, "--count: 1025 is out of range (1-1024)"},
      {{"base", "--count", "many"}, "--count: not an integer: 'many'"},
      {{"base", "--parallelism", "-1"}, "--parallelism: -1 is out of range"},
      {{"base", "--backend", "file", "--prefetch", "record"}, "--prefetch record needs --backend uffd"},
      {{"base", "--label", "x"}, "--label: 'x' is not KEY=VALUE"},
      {{}, "missing SNAPSHOT_REF (usage: fcvmctl clone SNAPSHOT_REF [options])"},
      {{"base", "other"}, "unexpected argument 'other'"},
  };
  for (const Case& c : cases) {
    Parser p;
    EXPECT_THAT(ParseCloneSnapshot(p.flags, c.args),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.error)))
        << ::testing::PrintToString(c.args);
  }
}

TEST(ParseSystemCommands, StatsWatchVersion) {
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(auto req, ParseGetPageServerStats(p.flags, {}));
    EXPECT_EQ(req.vm_ref(), "");
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(auto req, ParseGetPageServerStats(p.flags, {"web-1"}));
    EXPECT_EQ(req.vm_ref(), "web-1");
  }
  {
    Parser p;
    EXPECT_THAT(ParseGetPageServerStats(p.flags, {"a", "b"}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'b'")));
  }
  {
    Parser p;
    ASSERT_OK_AND_ASSIGN(auto req, ParseWatchEvents(p.flags, {"base"}));
    EXPECT_EQ(req.ref(), "base");
  }
  {
    Parser p;
    EXPECT_THAT(ParseGetVersion(p.flags, {"now"}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'now'")));
  }
}

}  // namespace
}  // namespace fcvm::cli

namespace fcvm::cli {
namespace {

TEST(ParsePublishExtra, HostGuestAndProtocol) {
  absl::StatusOr<fcvm::v1::PortMapping> tcp = ParsePublish("8080:80");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(tcp->host_port(), 8080u);
  EXPECT_EQ(tcp->guest_port(), 80u);
  EXPECT_EQ(tcp->protocol(), "tcp");
  absl::StatusOr<fcvm::v1::PortMapping> udp = ParsePublish("5353:53/udp");
  ASSERT_TRUE(udp.ok());
  EXPECT_EQ(udp->protocol(), "udp");
  for (const char* bad : {"80", "0:80", "80:0", "70000:1", "a:b", "1:2/sctp"}) {
    EXPECT_FALSE(ParsePublish(bad).ok()) << bad;
  }
}

// Issue 14: huge-page guests.
TEST(ParseRunVm, HugePages) {
  Parser p;
  ASSERT_OK_AND_ASSIGN(v1::RunVmRequest req, ParseRunVm(p.flags, {"--kernel", "/k", "--huge-pages", "2M"}));
  EXPECT_EQ(req.config().huge_pages(), v1::HUGE_PAGES_2M);
  Parser d;
  ASSERT_OK_AND_ASSIGN(v1::RunVmRequest def, ParseRunVm(d.flags, {"--kernel", "/k"}));
  EXPECT_EQ(def.config().huge_pages(), v1::HUGE_PAGES_NONE);
  Parser bad;
  EXPECT_THAT(
      ParseRunVm(bad.flags, {"--kernel", "/k", "--huge-pages", "1G"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--huge-pages: unknown huge page size '1G'")));
}

}  // namespace
}  // namespace fcvm::cli
