#include "lib/net/address_pool.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::net {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

class AddressPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fcvm-net-pool-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/net-pool.json";
  }
  void TearDown() override { EXPECT_OK(RemoveTree(dir_)); }

  std::unique_ptr<AddressPool> OpenPool(const std::string& cidr, int len = 30) {
    absl::StatusOr<Cidr> c = ParseCidr(cidr);
    EXPECT_OK(c);
    absl::StatusOr<std::unique_ptr<AddressPool>> p = AddressPool::Open(path_, *c, len);
    EXPECT_OK(p);
    return p.ok() ? std::move(*p) : nullptr;
  }

  std::string dir_;
  std::string path_;
};

TEST(AddressParseTest, ParsesAndRejects) {
  ASSERT_OK_AND_ASSIGN(Ipv4 ip, ParseIpv4("10.200.1.2"));
  EXPECT_EQ(ip.value, 0x0ac80102u);
  EXPECT_EQ(ip.ToString(), "10.200.1.2");
  EXPECT_THAT(ParseIpv4("10.200.1"), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(Cidr c, ParseCidr("10.200.0.0/16"));
  EXPECT_EQ(c.ToString(), "10.200.0.0/16");
  EXPECT_EQ(c.size(), 65536u);
  EXPECT_THAT(ParseCidr("10.200.0.1/16"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("host bits")));
  EXPECT_THAT(ParseCidr("10.200.0.0/33"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseCidr("10.200.0.0"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(AddressPoolTest, RejectsBadSplit) {
  ASSERT_OK_AND_ASSIGN(Cidr c, ParseCidr("10.0.0.0/16"));
  EXPECT_THAT(AddressPool::Open(path_, c, 29), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(Cidr tiny, ParseCidr("10.0.0.0/31"));
  EXPECT_THAT(AddressPool::Open(path_, tiny, 30), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(AddressPoolTest, AllocatesDistinctSubnetsWithHostAndVmEnds) {
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->capacity(), 16384u);
  ASSERT_OK_AND_ASSIGN(Allocation a, pool->Allocate("vm-a", {}));
  ASSERT_OK_AND_ASSIGN(Allocation b, pool->Allocate("vm-b", {}));
  EXPECT_EQ(a.slot, 0u);
  EXPECT_EQ(a.subnet.ToString(), "10.200.0.0/30");
  EXPECT_EQ(a.host_ip.ToString(), "10.200.0.1");
  EXPECT_EQ(a.vm_ip.ToString(), "10.200.0.2");
  EXPECT_EQ(b.slot, 1u);
  EXPECT_EQ(b.host_ip.ToString(), "10.200.0.5");
  EXPECT_EQ(b.vm_ip.ToString(), "10.200.0.6");
  // Same VM again: same allocation, no second subnet.
  ASSERT_OK_AND_ASSIGN(Allocation a2, pool->Allocate("vm-a", {}));
  EXPECT_EQ(a2.slot, 0u);
  EXPECT_EQ(pool->All().size(), 2u);
}

TEST_F(AddressPoolTest, Slash31Split) {
  auto pool = OpenPool("10.9.0.0/24", 31);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->capacity(), 128u);
  ASSERT_OK(pool->Allocate("x", {}));
  ASSERT_OK_AND_ASSIGN(Allocation y, pool->Allocate("y", {}));
  EXPECT_EQ(y.host_ip.ToString(), "10.9.0.2");
  EXPECT_EQ(y.vm_ip.ToString(), "10.9.0.3");
}

TEST_F(AddressPoolTest, ReleaseFreesTheSlotForReuseAndIsIdempotent) {
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  ASSERT_OK(pool->Allocate("vm-a", {}));
  ASSERT_OK(pool->Allocate("vm-b", {}));
  ASSERT_OK(pool->Allocate("vm-c", {}));
  ASSERT_OK(pool->Release("vm-b"));
  ASSERT_OK(pool->Release("vm-b"));
  EXPECT_THAT(pool->Lookup("vm-b"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(Allocation d, pool->Allocate("vm-d", {}));
  EXPECT_EQ(d.slot, 1u);  // the lowest free slot, the one vm-b held
  ASSERT_OK_AND_ASSIGN(Allocation e, pool->Allocate("vm-e", {}));
  EXPECT_EQ(e.slot, 3u);
}

TEST_F(AddressPoolTest, ExhaustionIsResourceExhausted) {
  auto pool = OpenPool("10.200.0.0/28");  // four /30s
  ASSERT_NE(pool, nullptr);
  for (int i = 0; i < 4; ++i) ASSERT_OK(pool->Allocate(absl::StrCat("vm-", i), {}));
  EXPECT_THAT(pool->Allocate("vm-4", {}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("address pool 10.200.0.0/28 is exhausted: all 4 /30")));
  ASSERT_OK(pool->Release("vm-2"));
  ASSERT_OK_AND_ASSIGN(Allocation a, pool->Allocate("vm-4", {}));
  EXPECT_EQ(a.slot, 2u);
}

TEST_F(AddressPoolTest, PersistsAcrossReopen) {
  {
    auto pool = OpenPool("10.200.0.0/16");
    ASSERT_NE(pool, nullptr);
    ASSERT_OK(pool->Allocate("vm-a", {}));
    ASSERT_OK(pool->Allocate("vm-b", {{Protocol::kTcp, 8080, 80}, {Protocol::kUdp, 5353, 53}}));
    ASSERT_OK(pool->Allocate("vm-c", {}));
    ASSERT_OK(pool->Release("vm-a"));
  }
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  EXPECT_THAT(pool->Lookup("vm-a"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(Allocation b, pool->Lookup("vm-b"));
  EXPECT_EQ(b.slot, 1u);
  EXPECT_EQ(b.vm_ip.ToString(), "10.200.0.6");
  ASSERT_EQ(b.published.size(), 2u);
  EXPECT_EQ(b.published[1], (PublishedPort{Protocol::kUdp, 5353, 53}));
  ASSERT_OK_AND_ASSIGN(Allocation c, pool->Lookup("vm-c"));
  EXPECT_EQ(c.slot, 2u);
  // Slots held before the restart are not handed out again.
  ASSERT_OK_AND_ASSIGN(Allocation d, pool->Allocate("vm-d", {}));
  EXPECT_EQ(d.slot, 0u);
  ASSERT_OK_AND_ASSIGN(Allocation e, pool->Allocate("vm-e", {}));
  EXPECT_EQ(e.slot, 3u);
}

TEST_F(AddressPoolTest, RefusesAFileWrittenForAnotherPool) {
  {
    auto pool = OpenPool("10.200.0.0/16");
    ASSERT_NE(pool, nullptr);
    ASSERT_OK(pool->Allocate("vm-a", {}));
  }
  ASSERT_OK_AND_ASSIGN(Cidr other, ParseCidr("10.201.0.0/16"));
  EXPECT_THAT(AddressPool::Open(path_, other, 30),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("10.200.0.0/16")));
}

TEST_F(AddressPoolTest, OnePoolPerFile) {
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  ASSERT_OK_AND_ASSIGN(Cidr c, ParseCidr("10.200.0.0/16"));
  EXPECT_THAT(AddressPool::Open(path_, c, 30),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
  pool.reset();
  EXPECT_OK(AddressPool::Open(path_, c, 30));
}

TEST_F(AddressPoolTest, CorruptFileIsDataLoss) {
  ASSERT_OK(WriteFileAtomic(path_, "{not json"));
  ASSERT_OK_AND_ASSIGN(Cidr c, ParseCidr("10.200.0.0/16"));
  EXPECT_THAT(AddressPool::Open(path_, c, 30), StatusIs(absl::StatusCode::kDataLoss));
}

TEST_F(AddressPoolTest, PublishedHostPortsAreExclusive) {
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  ASSERT_OK(pool->Allocate("vm-a", {{Protocol::kTcp, 8080, 80}}));
  EXPECT_THAT(pool->Allocate("vm-b", {{Protocol::kTcp, 8080, 81}}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("published by vm vm-a")));
  // Same number, other protocol: fine.
  ASSERT_OK(pool->Allocate("vm-b", {{Protocol::kUdp, 8080, 81}}));
  EXPECT_THAT(pool->Allocate("vm-c", {{Protocol::kTcp, 9000, 1}, {Protocol::kTcp, 9000, 2}}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("listed twice")));
  EXPECT_THAT(pool->Allocate("vm-c", {{Protocol::kTcp, 0, 1}}), StatusIs(absl::StatusCode::kInvalidArgument));
  // A failed allocation reserves nothing.
  EXPECT_THAT(pool->Lookup("vm-c"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(pool->Release("vm-a"));
  ASSERT_OK(pool->Allocate("vm-c", {{Protocol::kTcp, 8080, 80}}));
  // Asking again with other ports is refused, not silently changed.
  EXPECT_THAT(pool->Allocate("vm-c", {{Protocol::kTcp, 8081, 80}}),
              StatusIs(absl::StatusCode::kAlreadyExists));
}

TEST_F(AddressPoolTest, PersistFailureLeavesTableUnchanged) {
  auto pool = OpenPool("10.200.0.0/16");
  ASSERT_NE(pool, nullptr);
  ASSERT_OK(pool->Allocate("vm-a", {}));
  // A pool whose directory disappears cannot persist.
  ASSERT_OK(MakeDirs(dir_ + "/sub"));
  ASSERT_OK_AND_ASSIGN(Cidr c, ParseCidr("10.200.0.0/16"));
  ASSERT_OK_AND_ASSIGN(auto broken, AddressPool::Open(dir_ + "/sub/net-pool.json", c, 30));
  ASSERT_OK(RemoveTree(dir_ + "/sub"));
  EXPECT_FALSE(broken->Allocate("vm-x", {}).ok());
  EXPECT_THAT(broken->Lookup("vm-x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(broken->All().empty());
}

}  // namespace
}  // namespace fcvm::net
