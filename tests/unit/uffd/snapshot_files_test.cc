#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/uffd/snapshot.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::uffd {
namespace {

using ::fcvm::testing::StatusIs;

const FileIdentity kId{1 << 20, 42, 123456789, 4096};

TEST(SnapshotFilesTest, ZeroMapRoundTrip) {
  std::vector<uint64_t> bits(4, 0);
  bits[0] = 0x5;
  bits[3] = 1ull << 63;
  ASSERT_OK_AND_ASSIGN(auto back, DecodeZeroMap(EncodeZeroMap(kId, bits), kId));
  EXPECT_EQ(back, bits);
}

TEST(SnapshotFilesTest, StaleOrCorruptZeroMapRejected) {
  std::string enc = EncodeZeroMap(kId, std::vector<uint64_t>(4, 0));
  FileIdentity other = kId;
  other.mtime_ns += 1;
  EXPECT_THAT(DecodeZeroMap(enc, other), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(DecodeZeroMap(enc.substr(0, enc.size() - 1), kId),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeZeroMap("garbage", kId), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SnapshotFilesTest, WorkingSetRoundTripKeepsOrder) {
  std::vector<uint64_t> pages = {200, 3, 17, 255, 0};
  ASSERT_OK_AND_ASSIGN(auto back, DecodeWorkingSet(EncodeWorkingSet(kId, pages), kId));
  EXPECT_EQ(back, pages);
}

TEST(SnapshotFilesTest, WorkingSetKeepsTheRecordersBlock) {
  uint64_t block = 0;
  ASSERT_OK_AND_ASSIGN(auto back, DecodeWorkingSet(EncodeWorkingSet(kId, {1, 2}, 8), kId, &block));
  EXPECT_EQ(block, 8u);
  EXPECT_THAT(DecodeWorkingSet(EncodeWorkingSet(kId, {1}, 3), kId),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeWorkingSet(EncodeWorkingSet(kId, {1}, 0), kId),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::string enc = EncodeWorkingSet(kId, {1, 2, 3});
  EXPECT_THAT(DecodeWorkingSet(enc.substr(0, enc.size() - 8), kId),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SnapshotFilesTest, WorkingSetPagePastEndRejected) {
  EXPECT_THAT(DecodeWorkingSet(EncodeWorkingSet(kId, {256}), kId),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fcvm::uffd
