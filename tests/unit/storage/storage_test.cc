#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/storage/disk.h"
#include "lib/storage/snapshot_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::storage {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

using TempDir = ::fcvm::testing::TempDir;

TEST(CopyDisk, SparseFileKeepsDataAndHoles) {
  TempDir tmp;
  std::string src = tmp.path() + "/src.img";
  int fd = open(src.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const off_t size = 64 << 20;
  ASSERT_EQ(ftruncate(fd, size), 0);
  ASSERT_EQ(pwrite(fd, "head", 4, 0), 4);
  ASSERT_EQ(pwrite(fd, "tail", 4, size - 4), 4);
  close(fd);

  std::string dst = tmp.path() + "/dst.img";
  ASSERT_OK_AND_ASSIGN(CopyMethod method, CopyDisk(src, dst));
  ASSERT_OK_AND_ASSIGN(std::string copy, ReadFile(dst));
  ASSERT_EQ(copy.size(), static_cast<size_t>(size));
  EXPECT_EQ(copy.substr(0, 4), "head");
  EXPECT_EQ(copy.substr(size - 4), "tail");
  EXPECT_EQ(copy.find_first_not_of('\0', 4), static_cast<size_t>(size - 4));
  struct stat st;
  ASSERT_EQ(stat(dst.c_str(), &st), 0);
  if (method == CopyMethod::kSparseCopy) {
    // Holes stayed holes: far fewer blocks than the apparent size.
    EXPECT_LT(st.st_blocks * 512, size / 4) << "copy is not sparse";
  }
  // The copy is independent of its source.
  fd = open(dst.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_EQ(pwrite(fd, "HEAD", 4, 0), 4);
  close(fd);
  ASSERT_OK_AND_ASSIGN(std::string original, ReadFile(src));
  EXPECT_EQ(original.substr(0, 4), "head");
}

// copy_file_range refuses to copy between file systems (EXDEV since Linux
// 5.19): a disk image on another file system than the state directory must
// still be copied, data and holes.
TEST(CopyDisk, AcrossFileSystems) {
  TempDir tmp;
  struct stat a, b;
  if (stat("/dev/shm", &a) != 0 || stat(tmp.path().c_str(), &b) != 0 || a.st_dev == b.st_dev) {
    GTEST_SKIP() << "/dev/shm is not a file system apart from /tmp here";
  }
  char tmpl[] = "/dev/shm/fcvm-storage-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  absl::Cleanup rm = [&tmpl] { (void)RemoveTree(tmpl); };
  std::string src = std::string(tmpl) + "/src.img";
  int fd = open(src.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const off_t size = 8 << 20;
  ASSERT_EQ(ftruncate(fd, size), 0);
  std::string block(3 << 20, 'm');  // more than one copy buffer
  ASSERT_EQ(pwrite(fd, block.data(), block.size(), 1 << 20), static_cast<ssize_t>(block.size()));
  ASSERT_EQ(pwrite(fd, "tail", 4, size - 4), 4);
  close(fd);
  std::string dst = tmp.path() + "/dst.img";
  ASSERT_OK_AND_ASSIGN(CopyMethod method, CopyDisk(src, dst));
  EXPECT_EQ(method, CopyMethod::kSparseCopy);
  ASSERT_OK_AND_ASSIGN(std::string copy, ReadFile(dst));
  ASSERT_EQ(copy.size(), static_cast<size_t>(size));
  EXPECT_EQ(copy.find_first_not_of('\0'), static_cast<size_t>(1 << 20));
  EXPECT_EQ(copy.substr(1 << 20, block.size()), block);
  EXPECT_EQ(copy.find_first_not_of('\0', (1 << 20) + block.size()), static_cast<size_t>(size - 4));
  EXPECT_EQ(copy.substr(size - 4), "tail");
}

TEST(CopyDisk, ErrorsNameTheFileAndLeaveNothing) {
  TempDir tmp;
  EXPECT_THAT(CopyDisk(tmp.path() + "/missing.img", tmp.path() + "/out.img"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing.img")));
  EXPECT_NE(access((tmp.path() + "/out.img").c_str(), F_OK), 0);
  std::string src = tmp.path() + "/a.img";
  ASSERT_OK(WriteFileAtomic(src, "data"));
  ASSERT_OK(WriteFileAtomic(tmp.path() + "/exists.img", "x"));
  EXPECT_THAT(CopyDisk(src, tmp.path() + "/exists.img"), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(CopyDisk(tmp.path(), tmp.path() + "/dir.img"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DiskSpace, FreeAndAllocatedBytesAndTheRefusal) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(uint64_t free_bytes, FreeBytes(tmp.path()));
  EXPECT_GT(free_bytes, 0u);
  // A 64 MiB file with 1 MiB of data: a sparse copy needs about 1 MiB.
  std::string sparse = tmp.path() + "/sparse.img";
  int fd = open(sparse.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 64 << 20), 0);
  std::string mib(1 << 20, 'x');
  ASSERT_EQ(pwrite(fd, mib.data(), mib.size(), 8 << 20), static_cast<ssize_t>(mib.size()));
  close(fd);
  ASSERT_OK_AND_ASSIGN(uint64_t allocated, AllocatedBytes(sparse));
  EXPECT_GE(allocated, uint64_t{1} << 20);
  EXPECT_LT(allocated, uint64_t{4} << 20);
  EXPECT_THAT(AllocatedBytes(tmp.path() + "/missing"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));

  EXPECT_OK(CheckFreeSpace(tmp.path(), 1 << 20, "a test"));
  absl::Status st = CheckFreeSpace(tmp.path(), free_bytes, "a test");
  EXPECT_THAT(st,
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("not enough disk space for a test")));
  EXPECT_THAT(st.message(), HasSubstr(tmp.path()));
  EXPECT_THAT(st.message(), HasSubstr("free"));
  // Cannot tell: let the write report.
  EXPECT_OK(CheckFreeSpace(tmp.path() + "/no/such/dir", uint64_t{1} << 60, "a test"));
}

TEST(DiskSpace, ReflinkProbeLeavesNothing) {
  TempDir tmp;
  bool reflink = SupportsReflink(tmp.path());
  // /tmp here is ext4 or tmpfs: neither reflinks. Either way the probe cleans up.
  std::printf("reflink in %s: %s\n", tmp.path().c_str(), reflink ? "yes" : "no");
  EXPECT_NE(access((tmp.path() + "/.reflink-probe-a").c_str(), F_OK), 0);
  EXPECT_NE(access((tmp.path() + "/.reflink-probe-b").c_str(), F_OK), 0);
  EXPECT_FALSE(SupportsReflink(tmp.path() + "/no/such/dir"));
}

void FillSnapshotFiles(const PendingSnapshot& p) {
  ASSERT_OK(WriteFileAtomic(SnapshotStore::VmstatePath(p.dir), "vmstate-bytes"));
  ASSERT_OK(WriteFileAtomic(SnapshotStore::MemoryPath(p.dir), std::string(8192, 'm')));
}

TEST(SnapshotStore, CommitGetListDelete) {
  TempDir tmp;
  std::string root = tmp.path() + "/snapshots";
  ASSERT_OK_AND_ASSIGN(auto store, SnapshotStore::Open(root));
  ASSERT_OK_AND_ASSIGN(PendingSnapshot p, store->Begin("snap-1", "base"));
  // Nothing is visible while it is being built.
  EXPECT_THAT(store->Get("base"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Begin("snap-2", "base"), StatusIs(absl::StatusCode::kAlreadyExists));
  FillSnapshotFiles(p);
  SnapshotRecord rec;
  rec.labels = {{"app", "web"}};
  rec.source_vm_id = "vm-1";
  rec.config_json = R"({"memory_mib":128})";
  rec.host_json = R"({"cpu":{"vendor":"X"},"page_size":4096})";
  ASSERT_OK_AND_ASSIGN(SnapshotRecord done, store->Commit(p, rec));
  EXPECT_EQ(done.memory_bytes, 8192u);
  EXPECT_EQ(done.vmstate_bytes, 13u);
  EXPECT_EQ(done.memory_sha256.size(), 64u);
  EXPECT_NE(access(p.dir.c_str(), F_OK), 0) << "temporary dir left";

  ASSERT_OK_AND_ASSIGN(SnapshotRecord by_name, store->Get("base"));
  EXPECT_EQ(by_name.id, "snap-1");
  ASSERT_OK_AND_ASSIGN(SnapshotRecord by_id, store->Get("snap-1"));
  EXPECT_EQ(by_id.labels.at("app"), "web");
  EXPECT_EQ(store->List().size(), 1u);

  // Survives a reopen, with the same record.
  ASSERT_OK_AND_ASSIGN(auto reopened, SnapshotStore::Open(root));
  ASSERT_OK_AND_ASSIGN(SnapshotRecord again, reopened->Get("base"));
  EXPECT_EQ(again.memory_sha256, done.memory_sha256);
  EXPECT_EQ(again.config_json, R"({"memory_mib":128})");
  EXPECT_EQ(again.host_json, R"({"cpu":{"vendor":"X"},"page_size":4096})");

  ASSERT_OK(store->Delete("snap-1"));
  EXPECT_THAT(store->Get("snap-1"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_NE(access(store->Dir("snap-1").c_str(), F_OK), 0);
  EXPECT_THAT(store->Delete("snap-1"), StatusIs(absl::StatusCode::kNotFound));
}

// Live fork's layers: a snapshot whose memory lies on another's.
TEST(SnapshotStore, LayersStackAndStayWhileAnotherLiesOnThem) {
  TempDir tmp;
  std::string root = tmp.path() + "/snapshots";
  ASSERT_OK_AND_ASSIGN(auto store, SnapshotStore::Open(root));
  ASSERT_OK_AND_ASSIGN(PendingSnapshot p, store->Begin("snap-base", "base"));
  FillSnapshotFiles(p);
  ASSERT_OK_AND_ASSIGN(SnapshotRecord base, store->Commit(p, {}));
  EXPECT_TRUE(base.parent_id.empty());

  // A layer: sparse, one page of two written.
  ASSERT_OK_AND_ASSIGN(PendingSnapshot q, store->Begin("snap-layer", "layer"));
  ASSERT_OK(WriteFileAtomic(SnapshotStore::VmstatePath(q.dir), "vmstate-bytes"));
  {
    int fd = open(SnapshotStore::MemoryPath(q.dir).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 8192), 0);
    ASSERT_EQ(pwrite(fd, std::string(4096, 'L').data(), 4096, 4096), 4096);
    close(fd);
  }
  SnapshotRecord layer_rec;
  layer_rec.parent_id = "snap-base";
  ASSERT_OK_AND_ASSIGN(SnapshotRecord layer, store->Commit(q, layer_rec));
  EXPECT_EQ(layer.parent_id, "snap-base");
  EXPECT_EQ(layer.memory_sha256, "") << "a layer is not a memory anyone had";
  EXPECT_EQ(layer.memory_bytes, 8192u);
  EXPECT_LE(layer.memory_allocated_bytes, 4096u) << "the hole is not counted";
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> layers, store->MemoryLayers(layer));
  EXPECT_EQ(layers, (std::vector<std::string>{SnapshotStore::MemoryPath(store->Dir("snap-base")),
                                              SnapshotStore::MemoryPath(store->Dir("snap-layer"))}));
  EXPECT_EQ(store->Children("snap-base"), std::vector<std::string>{"snap-layer"});
  EXPECT_THAT(store->Delete("snap-base"), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                   HasSubstr("memory layer under snapshot layer")));

  // A layer over a snapshot that is gone is refused at commit.
  ASSERT_OK_AND_ASSIGN(PendingSnapshot orphan, store->Begin("snap-orphan", "orphan"));
  FillSnapshotFiles(orphan);
  SnapshotRecord orphan_rec;
  orphan_rec.parent_id = "snap-gone";
  EXPECT_THAT(store->Commit(orphan, orphan_rec), StatusIs(absl::StatusCode::kFailedPrecondition));
  store->Abort(orphan);

  // The parent survives a reopen; merging makes the layer whole.
  ASSERT_OK_AND_ASSIGN(auto reopened, SnapshotStore::Open(root));
  ASSERT_OK_AND_ASSIGN(SnapshotRecord again, reopened->Get("layer"));
  EXPECT_EQ(again.parent_id, "snap-base");
  const std::string merged = reopened->Dir("snap-layer") + "/merged";
  ASSERT_OK(WriteFileAtomic(merged, std::string(4096, 'm') + std::string(4096, 'L')));
  ASSERT_OK(reopened->ReplaceWithWholeMemory("snap-layer", merged));
  ASSERT_OK_AND_ASSIGN(SnapshotRecord whole, reopened->Get("layer"));
  EXPECT_EQ(whole.parent_id, "");
  EXPECT_EQ(whole.memory_sha256.size(), 64u);
  EXPECT_EQ(ReadFile(SnapshotStore::MemoryPath(reopened->Dir("snap-layer"))).value_or(""),
            std::string(4096, 'm') + std::string(4096, 'L'));
  ASSERT_OK_AND_ASSIGN(layers, reopened->MemoryLayers(whole));
  EXPECT_EQ(layers.size(), 1u);
  ASSERT_OK(reopened->Delete("snap-base"));  // nothing lies on it now
  ASSERT_OK_AND_ASSIGN(auto third, SnapshotStore::Open(root));
  ASSERT_OK_AND_ASSIGN(SnapshotRecord persisted, third->Get("layer"));
  EXPECT_EQ(persisted.parent_id, "") << "the merge is on disk";
}

TEST(SnapshotStore, AbortAndCrashLeftoversLeaveNoHalfSnapshot) {
  TempDir tmp;
  std::string root = tmp.path() + "/snapshots";
  {
    ASSERT_OK_AND_ASSIGN(auto store, SnapshotStore::Open(root));
    ASSERT_OK_AND_ASSIGN(PendingSnapshot p, store->Begin("snap-a", "a"));
    FillSnapshotFiles(p);
    store->Abort(p);
    EXPECT_NE(access(p.dir.c_str(), F_OK), 0);
    // The name is free again.
    ASSERT_OK_AND_ASSIGN(PendingSnapshot p2, store->Begin("snap-b", "a"));
    FillSnapshotFiles(p2);
    // "Crash": the store goes away with p2 never committed.
  }
  ASSERT_OK_AND_ASSIGN(auto store, SnapshotStore::Open(root));
  EXPECT_TRUE(store->List().empty());
  EXPECT_NE(access((root + "/.tmp-snap-b").c_str(), F_OK), 0) << "leftover not cleaned";
}

TEST(SnapshotStore, CommitWithoutMemoryFails) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(auto store, SnapshotStore::Open(tmp.path() + "/s"));
  ASSERT_OK_AND_ASSIGN(PendingSnapshot p, store->Begin("snap-x", "x"));
  ASSERT_OK(WriteFileAtomic(SnapshotStore::VmstatePath(p.dir), "v"));
  EXPECT_THAT(store->Commit(p, {}), StatusIs(absl::StatusCode::kNotFound, HasSubstr("memory")));
  store->Abort(p);
}

TEST(Sha256File, KnownDigest) {
  TempDir tmp;
  ASSERT_OK(WriteFileAtomic(tmp.path() + "/abc", "abc"));
  ASSERT_OK_AND_ASSIGN(std::string digest, Sha256File(tmp.path() + "/abc"));
  EXPECT_EQ(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace fcvm::storage
