#include "lib/firecracker/snapshot_compat.h"

#include <string>

#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// The first bytes of a vmstate written by Firecracker v1.14.2 (hexdump of a
// real one): magic 0x0710198486640000, length 5, "8.0.0", then the state.
std::string RealVmstateHead() {
  const unsigned char bytes[] = {0x00, 0x00, 0x64, 0x86, 0x84, 0x19, 0x10, 0x07, 0x05, 0x00, 0x00, 0x00,
                                 0x00, 0x00, 0x00, 0x00, '8',  '.',  '0',  '.',  '0',  0x80, 0x00, 0x00};
  return std::string(reinterpret_cast<const char*>(bytes), sizeof(bytes));
}

TEST(SnapshotCompat, ParsesTheVmstateHeader) {
  ASSERT_OK_AND_ASSIGN(Version v, ParseVmstateFormat(RealVmstateHead()));
  EXPECT_EQ(v.ToString(), "8.0.0");
  std::string bad = RealVmstateHead();
  bad[7] = 0x01;  // aarch64's or anything else's magic
  EXPECT_THAT(ParseVmstateFormat(bad), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("magic")));
  std::string long_len = RealVmstateHead();
  long_len[8] = 0x7f;
  EXPECT_THAT(ParseVmstateFormat(long_len),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("length")));
  EXPECT_THAT(ParseVmstateFormat(RealVmstateHead().substr(0, 10)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::string not_version = RealVmstateHead();
  not_version[16] = 'x';
  EXPECT_THAT(ParseVmstateFormat(not_version), StatusIs(absl::StatusCode::kInvalidArgument));

  fcvm::testing::TempDir tmp;
  ASSERT_OK(WriteFileAtomic(tmp.path() + "/vmstate", RealVmstateHead()));
  ASSERT_OK_AND_ASSIGN(Version f, ReadVmstateFormat(tmp.path() + "/vmstate"));
  EXPECT_EQ(f.ToString(), "8.0.0");
  EXPECT_THAT(ReadVmstateFormat(tmp.path() + "/missing"), StatusIs(absl::StatusCode::kNotFound));
}

TEST(SnapshotCompat, FormatRuleIsFirecrackers) {
  Version fc{8, 2, 0, ""};
  EXPECT_TRUE(FormatLoadable({8, 0, 0, ""}, fc));
  EXPECT_TRUE(FormatLoadable({8, 2, 7, ""}, fc));
  EXPECT_FALSE(FormatLoadable({8, 3, 0, ""}, fc));
  EXPECT_FALSE(FormatLoadable({7, 0, 0, ""}, fc));
  EXPECT_FALSE(FormatLoadable({9, 0, 0, ""}, fc));
}

constexpr char kCpuinfo[] =
    "processor\t: 0\n"
    "vendor_id\t: AuthenticAMD\n"
    "cpu family\t: 25\n"
    "model\t\t: 1\n"
    "model name\t: AMD EPYC\n"
    "stepping\t: 1\n"
    "flags\t\t: fpu vme pni ssse3 avx avx2 sha_ni hypervisor constant_tsc\n"
    "\n"
    "processor\t: 1\n"
    "vendor_id\t: SomethingElse\n";

TEST(SnapshotCompat, ParsesCpuinfo) {
  ASSERT_OK_AND_ASSIGN(CpuIdentity cpu, ParseCpuInfo(kCpuinfo));
  EXPECT_EQ(cpu.vendor, "AuthenticAMD");
  EXPECT_EQ(cpu.family, 25);
  EXPECT_EQ(cpu.model, 1);
  EXPECT_EQ(cpu.stepping, 1);
  EXPECT_EQ(cpu.model_name, "AMD EPYC");
  // Only the flags a snapshot depends on, sorted; not hypervisor, fpu...
  EXPECT_THAT(cpu.flags, ElementsAre("avx", "avx2", "pni", "sha_ni", "ssse3"));
  EXPECT_THAT(ParseCpuInfo("processor : 0\n"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SnapshotCompat, ProbesThisHost) {
  ASSERT_OK_AND_ASSIGN(SnapshotHost h, ProbeHost());
  EXPECT_FALSE(h.cpu.vendor.empty());
  EXPECT_FALSE(h.kernel_release.empty());
  EXPECT_GE(h.page_size, 4096u);
  // This host restores what it makes.
  EXPECT_OK(CheckSnapshotHost(h, h));
}

SnapshotHost Host() {
  SnapshotHost h;
  h.firecracker_version = "1.14.2";
  h.snapshot_format = "8.0.0";
  h.cpu = *ParseCpuInfo(kCpuinfo);
  h.kernel_release = "6.18.44";
  h.page_size = 4096;
  return h;
}

TEST(SnapshotCompat, JsonRoundTrip) {
  SnapshotHost h = Host();
  ASSERT_OK_AND_ASSIGN(SnapshotHost back, SnapshotHostFromJson(SnapshotHostToJson(h)));
  EXPECT_EQ(back.firecracker_version, "1.14.2");
  EXPECT_EQ(back.snapshot_format, "8.0.0");
  EXPECT_EQ(back.cpu.vendor, h.cpu.vendor);
  EXPECT_EQ(back.cpu.family, 25);
  EXPECT_EQ(back.cpu.flags, h.cpu.flags);
  EXPECT_EQ(back.kernel_release, "6.18.44");
  EXPECT_EQ(back.page_size, 4096u);
  EXPECT_THAT(SnapshotHostFromJson("[1]"), StatusIs(absl::StatusCode::kInvalidArgument));
  // Missing fields are unknown, and unknown is not compared.
  ASSERT_OK_AND_ASSIGN(SnapshotHost empty, SnapshotHostFromJson("{}"));
  EXPECT_OK(CheckSnapshotHost(empty, h));
}

TEST(SnapshotCompat, RefusesWhatMatters) {
  const SnapshotHost here = Host();
  EXPECT_OK(CheckSnapshotHost(here, here));

  SnapshotHost patch = here;
  patch.firecracker_version = "1.14.0";
  EXPECT_OK(CheckSnapshotHost(patch, here)) << "patch releases keep the format";
  SnapshotHost kernel = here;
  kernel.kernel_release = "5.10.0";
  EXPECT_OK(CheckSnapshotHost(kernel, here)) << "the kernel is recorded, not compared";
  SnapshotHost stepping = here;
  stepping.cpu.stepping = 9;
  stepping.cpu.model_name = "other name";
  EXPECT_OK(CheckSnapshotHost(stepping, here));
  SnapshotHost fewer = here;
  fewer.cpu.flags = {"avx"};
  EXPECT_OK(CheckSnapshotHost(fewer, here)) << "a host with more features restores it";

  SnapshotHost minor = here;
  minor.firecracker_version = "1.13.0";
  EXPECT_THAT(CheckSnapshotHost(minor, here),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("Firecracker version: snapshot 1.13.0, this host 1.14.2"),
                             Not(HasSubstr("format")))));
  SnapshotHost format = here;
  format.snapshot_format = "8.1.0";
  EXPECT_THAT(CheckSnapshotHost(format, here),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("snapshot format: snapshot 8.1.0")));
  SnapshotHost vendor = here;
  vendor.cpu.vendor = "GenuineIntel";
  EXPECT_THAT(CheckSnapshotHost(vendor, here),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("CPU vendor: snapshot GenuineIntel, this host AuthenticAMD")));
  SnapshotHost model = here;
  model.cpu.model = 17;
  EXPECT_THAT(CheckSnapshotHost(model, here),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("family 25 model 17")));
  SnapshotHost more = here;
  more.cpu.flags.push_back("avx512f");
  more.cpu.flags.push_back("amx_tile");
  EXPECT_THAT(CheckSnapshotHost(more, here), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                      HasSubstr("this host lacks: avx512f amx_tile")));
  SnapshotHost page = here;
  page.page_size = 16384;
  EXPECT_THAT(CheckSnapshotHost(page, here),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("page size: snapshot 16384, this host 4096")));
  SnapshotHost garbage = here;
  garbage.firecracker_version = "banana";
  EXPECT_THAT(CheckSnapshotHost(garbage, here),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("banana")));

  // Every difference is named at once.
  SnapshotHost both = minor;
  both.cpu.vendor = "GenuineIntel";
  EXPECT_THAT(CheckSnapshotHost(both, here),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("Firecracker version"), HasSubstr("CPU vendor"))));
}

}  // namespace
}  // namespace fcvm::firecracker
