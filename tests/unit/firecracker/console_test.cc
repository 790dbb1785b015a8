#include "lib/firecracker/console.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/firecracker/vmm.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace fcvm::firecracker {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::ElementsAre;

using TempDir = ::fcvm::testing::TempDir;

off_t SizeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

TEST(LineRing, SplitsLinesAndKeepsTheLast) {
  LineRing ring(3);
  ring.Append("a\r\nb\nc");
  EXPECT_THAT(ring.Lines(), ElementsAre("a", "b"));
  EXPECT_EQ(ring.partial(), "c");
  ring.Append("\nd\ne\n");
  EXPECT_THAT(ring.Lines(), ElementsAre("c", "d", "e"));
  EXPECT_EQ(ring.total_lines(), 5u);
  EXPECT_THAT(ring.Last(2), ElementsAre("d", "e"));
  EXPECT_THAT(ring.Last(10), ElementsAre("c", "d", "e"));
  EXPECT_EQ(ring.Get(1), nullptr);  // "b" fell out
  ASSERT_NE(ring.Get(2), nullptr);
  EXPECT_EQ(*ring.Get(2), "c");
  EXPECT_EQ(ring.Get(5), nullptr);
  ring.Append("tail");
  ring.Flush();
  EXPECT_THAT(ring.Last(1), ElementsAre("tail"));
  ring.Flush();  // nothing pending: no empty line
  EXPECT_EQ(ring.total_lines(), 6u);
}

TEST(LineRing, CutsLongLines) {
  LineRing ring(10, 4);
  ring.Append("abcdefghij\n");
  EXPECT_THAT(ring.Lines(), ElementsAre("abcd", "efgh", "ij"));
}

TEST(CappedLogFile, RotatesAtTheCap) {
  TempDir dir;
  std::string path = dir.path() + "/console.log";
  ASSERT_OK_AND_ASSIGN(CappedLogFile log, CappedLogFile::Open(path, 100));
  for (int i = 0; i < 25; ++i) ASSERT_OK(log.Write("0123456789"));  // 250 bytes
  EXPECT_LE(SizeOf(path), 100);
  EXPECT_EQ(SizeOf(path + ".1"), 100);
  EXPECT_EQ(SizeOf(path), 50);
  ASSERT_OK_AND_ASSIGN(std::string tail, ReadFile(path));
  EXPECT_EQ(tail, "01234567890123456789012345678901234567890123456789");
}

struct Pipe {
  UniqueFd r, w;
  Pipe() {
    int p[2];
    EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
    r.Reset(p[0]);
    w.Reset(p[1]);
  }
};

void WriteAll(int fd, const std::string& s) {
  ASSERT_EQ(write(fd, s.data(), s.size()), static_cast<ssize_t>(s.size()));
}

TEST(ConsoleCapture, DrainsToFileAndWaitsForLines) {
  TempDir dir;
  Pipe pipe;
  std::string log = dir.path() + "/console.log";
  ASSERT_OK_AND_ASSIGN(auto console,
                       ConsoleCapture::Start(std::move(pipe.r), {.log_path = log, .ring_lines = 4}));
  std::thread writer([fd = pipe.w.get()] {
    for (int i = 0; i < 10; ++i) WriteAll(fd, absl::StrCat("TICK ", i, " OK\n"));
  });
  uint64_t n = 0;
  ASSERT_OK_AND_ASSIGN(
      std::string line,
      console->WaitForLine([](absl::string_view l) { return absl::StrContains(l, "TICK 9"); }, 0,
                           absl::Now() + absl::Seconds(10), &n));
  writer.join();
  EXPECT_EQ(line, "TICK 9 OK");
  EXPECT_EQ(n, 9u);
  // Waiting from a later line skips earlier matches (lines 0-5 fell out of the ring).
  ASSERT_OK_AND_ASSIGN(
      line, console->WaitForLine([](absl::string_view l) { return absl::StrContains(l, "TICK"); }, 7,
                                 absl::Now() + absl::Seconds(1), &n));
  EXPECT_EQ(line, "TICK 7 OK");
  EXPECT_EQ(n, 7u);
  EXPECT_EQ(console->line_count(), 10u);
  EXPECT_THAT(console->LastLines(2), ElementsAre("TICK 8 OK", "TICK 9 OK"));
  EXPECT_FALSE(console->closed());
  // Nothing newer than line 10 arrives: the wait times out.
  EXPECT_THAT(
      console->WaitForLine([](absl::string_view) { return true; }, 10, absl::Now() + absl::Milliseconds(50)),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The writer's exit (EOF) closes the console and wakes waiters.
  WriteAll(pipe.w.get(), "last words without newline");
  pipe.w.Reset();
  EXPECT_THAT(
      console->WaitForLine([](absl::string_view l) { return l == "never"; }, 0, absl::InfiniteFuture()),
      StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(console->closed());
  EXPECT_THAT(console->LastLines(1), ElementsAre("last words without newline"));
  console->Stop();
  ASSERT_OK_AND_ASSIGN(std::string content, ReadFile(log));
  EXPECT_TRUE(absl::StartsWith(content, "TICK 0 OK\nTICK 1 OK\n"));
  EXPECT_TRUE(absl::EndsWith(content, "TICK 9 OK\nlast words without newline"));
  EXPECT_OK(console->log_error());
}

// The console FIFO outlives its reader: while nobody reads, a write fails
// with EPIPE (Firecracker survives it), and a new reader (the next fcvmd)
// takes over and appends to the same log.
TEST(ConsoleFifo, ANewReaderTakesOverAndAppends) {
  signal(SIGPIPE, SIG_IGN);  // as Firecracker handles it
  TempDir dir;
  std::string log = dir.path() + "/console.log";
  ASSERT_OK_AND_ASSIGN(UniqueFd r, OpenConsoleFifo(dir.path(), /*create=*/true));
  UniqueFd w(open(ConsoleFifoPath(dir.path()).c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(w);
  auto is = [](const char* want) { return [want](absl::string_view l) { return l == want; }; };
  {
    ASSERT_OK_AND_ASSIGN(auto first, ConsoleCapture::Start(std::move(r), {.log_path = log}));
    WriteAll(w.get(), "one\n");
    ASSERT_OK(first->WaitForLine(is("one"), 0, absl::Now() + absl::Seconds(10)).status());
  }
  EXPECT_EQ(write(w.get(), "lost\n", 5), -1);
  EXPECT_EQ(errno, EPIPE);
  ASSERT_OK_AND_ASSIGN(auto second, ReattachConsole(dir.path(), 1 << 20));
  WriteAll(w.get(), "two\n");
  ASSERT_OK(second->WaitForLine(is("two"), 0, absl::Now() + absl::Seconds(10)).status());
  w.Reset();  // the writer exits: the capture ends
  EXPECT_THAT(second->WaitForLine(is("never"), 0, absl::Now() + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(ReadFile(log).value_or(""), "one\ntwo\n");
  // Reattaching where there is no FIFO fails, naming it.
  EXPECT_THAT(ReattachConsole(dir.path() + "/nope", 1 << 20), StatusIs(absl::StatusCode::kNotFound));
}

TEST(ConsoleCapture, StopDrainsWhileTheWriterLives) {
  TempDir dir;
  Pipe pipe;
  ASSERT_OK_AND_ASSIGN(auto console,
                       ConsoleCapture::Start(std::move(pipe.r), {.log_path = dir.path() + "/c.log"}));
  WriteAll(pipe.w.get(), "one\ntwo\n");
  // The write end stays open: Stop must not hang on it.
  console->Stop();
  EXPECT_TRUE(console->closed());
  EXPECT_THAT(console->LastLines(5), ElementsAre("one", "two"));
  console->Stop();  // idempotent
}

TEST(ConsoleCapture, LogStaysBounded) {
  TempDir dir;
  Pipe pipe;
  std::string log = dir.path() + "/c.log";
  ASSERT_OK_AND_ASSIGN(
      auto console,
      ConsoleCapture::Start(std::move(pipe.r), {.log_path = log, .max_log_bytes = 4096, .ring_lines = 8}));
  std::string chunk(1000, 'x');
  chunk += '\n';
  for (int i = 0; i < 100; ++i) WriteAll(pipe.w.get(), chunk);
  pipe.w.Reset();
  ASSERT_THAT(
      console->WaitForLine([](absl::string_view) { return false; }, 0, absl::Now() + absl::Seconds(10)),
      StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_LE(SizeOf(log), 4096);
  EXPECT_LE(SizeOf(log + ".1"), 4096);
  EXPECT_EQ(console->line_count(), 100u);
  EXPECT_EQ(console->LastLines(100).size(), 8u);
}

TEST(ConsoleCapture, ReportsAnUnwritableLog) {
  Pipe pipe;
  EXPECT_THAT(ConsoleCapture::Start(std::move(pipe.r), {.log_path = "/nonexistent-dir/c.log"}),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fcvm::firecracker
