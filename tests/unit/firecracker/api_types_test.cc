#include "lib/firecracker/api_types.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using Json = nlohmann::json;

Json P(const std::string& s) { return Json::parse(s); }

TEST(ApiTypes, BootSource) {
  EXPECT_EQ(P(ToJson(BootSource{.kernel_image_path = "/k", .boot_args = "console=ttyS0"})),
            P(R"({"kernel_image_path":"/k","boot_args":"console=ttyS0"})"));
  EXPECT_EQ(
      P(ToJson(BootSource{.kernel_image_path = "/k", .boot_args = "", .initrd_path = "/i"}))["initrd_path"],
      "/i");
}

TEST(ApiTypes, MachineConfigLeavesUnsetFieldsOut) {
  EXPECT_EQ(P(ToJson(MachineConfig{.vcpu_count = 2, .mem_size_mib = 256})),
            P(R"({"vcpu_count":2,"mem_size_mib":256})"));
  EXPECT_EQ(
      P(ToJson(MachineConfig{.vcpu_count = 1, .mem_size_mib = 128, .smt = false, .track_dirty_pages = true})),
      P(R"({"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":true})"));
}

TEST(ApiTypes, DriveAndNetwork) {
  EXPECT_EQ(P(ToJson(Drive{.drive_id = "rootfs", .path_on_host = "/d.img", .is_root_device = true})),
            P(R"({"drive_id":"rootfs","path_on_host":"/d.img","is_root_device":true,"is_read_only":false})"));
  EXPECT_EQ(P(ToJson(NetworkInterface{
                .iface_id = "eth0", .host_dev_name = "tap0", .guest_mac = "06:00:00:00:00:01"})),
            P(R"({"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"})"));
}

TEST(ApiTypes, LoggerMetricsActions) {
  EXPECT_EQ(P(ToJson(LoggerConfig{.log_path = "/l", .level = "Debug"})),
            P(R"({"log_path":"/l","level":"Debug"})"));
  EXPECT_EQ(P(ToJson(MetricsConfig{.metrics_path = "/m"})), P(R"({"metrics_path":"/m"})"));
  EXPECT_EQ(P(ActionJson("InstanceStart")), P(R"({"action_type":"InstanceStart"})"));
  EXPECT_EQ(P(VmStateJson(true)), P(R"({"state":"Paused"})"));
  EXPECT_EQ(P(VmStateJson(false)), P(R"({"state":"Resumed"})"));
}

TEST(ApiTypes, SnapshotCreate) {
  EXPECT_EQ(
      P(ToJson(SnapshotCreate{.type = SnapshotType::kDiff, .snapshot_path = "/s", .mem_file_path = "/m"})),
      P(R"({"snapshot_type":"Diff","snapshot_path":"/s","mem_file_path":"/m"})"));
  EXPECT_EQ(P(ToJson(SnapshotCreate{.snapshot_path = "/s", .mem_file_path = "/m"}))["snapshot_type"], "Full");
}

TEST(ApiTypes, SnapshotLoad) {
  EXPECT_EQ(
      P(ToJson(SnapshotLoad{.snapshot_path = "/s", .backend_path = "/m"})),
      P(R"({"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":false})"));
  SnapshotLoad uffd{.snapshot_path = "/s",
                    .backend = MemBackend::kUffd,
                    .backend_path = "/run/uffd.sock",
                    .resume_vm = true,
                    .track_dirty_pages = true,
                    .network_overrides = {{"eth0", "tap7"}, {"eth1", "tap8"}}};
  EXPECT_EQ(P(ToJson(uffd)), P(R"({"snapshot_path":"/s",
      "mem_backend":{"backend_type":"Uffd","backend_path":"/run/uffd.sock"},
      "resume_vm":true,"track_dirty_pages":true,
      "network_overrides":[{"iface_id":"eth0","host_dev_name":"tap7"},{"iface_id":"eth1","host_dev_name":"tap8"}]})"));
}

TEST(ApiTypes, EncodesAwkwardStrings) {
  // Quotes and control characters are escaped; invalid UTF-8 does not throw.
  std::string j = ToJson(BootSource{.kernel_image_path = "/a\"b\n", .boot_args = std::string("\xff\xfe", 2)});
  Json parsed = P(j);
  EXPECT_EQ(parsed["kernel_image_path"], "/a\"b\n");
}

TEST(ApiTypes, ParseInstanceInfo) {
  ASSERT_OK_AND_ASSIGN(
      InstanceInfo info,
      ParseInstanceInfo(R"({"id":"vm1","state":"Paused","vmm_version":"1.14.2","app_name":"Firecracker"})"));
  EXPECT_EQ(info.id, "vm1");
  EXPECT_EQ(info.state, VmState::kPaused);
  EXPECT_EQ(info.vmm_version, "1.14.2");
  EXPECT_EQ(info.app_name, "Firecracker");
  ASSERT_OK_AND_ASSIGN(InstanceInfo ns, ParseInstanceInfo(R"({"state":"Not started","future_field":[1]})"));
  EXPECT_EQ(ns.state, VmState::kNotStarted);
  EXPECT_EQ(ToString(ns.state), "Not started");
}

TEST(ApiTypes, ParseInstanceInfoErrors) {
  EXPECT_THAT(ParseInstanceInfo("not json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not json")));
  EXPECT_THAT(ParseInstanceInfo("[1,2]"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseInstanceInfo(R"({"id":"x"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("state")));
  EXPECT_THAT(ParseInstanceInfo(R"({"state":"Flying"})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Flying")));
  EXPECT_THAT(ParseInstanceInfo(R"({"state":7})"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseInstanceInfo(R"({"state":"Running")"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ApiTypes, ParseVersionAndFault) {
  ASSERT_OK_AND_ASSIGN(std::string v, ParseFirecrackerVersion(R"({"firecracker_version":"1.14.2"})"));
  EXPECT_EQ(v, "1.14.2");
  EXPECT_THAT(ParseFirecrackerVersion(R"({})"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(ParseFaultMessage(R"({"fault_message":"boom"})"), "boom");
  EXPECT_EQ(ParseFaultMessage("<html>"), std::nullopt);
  EXPECT_EQ(ParseFaultMessage(R"({"fault_message":3})"), std::nullopt);
}

}  // namespace
}  // namespace fcvm::firecracker
