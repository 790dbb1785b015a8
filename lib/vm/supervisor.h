#pragma once

// Watches the Firecracker processes of every VM from one io_uring event loop
// (lib/io): one poll per pidfd, no thread per VM or per exit. When a process
// exits, its handler is handed to an executor, because handling an exit
// blocks (reaping, tearing down a network, writing a record).
//
// Thread-safety: Watch and Unwatch may be called from any thread except the
// loop's own. A handler may still be running (or just about to run) when
// Unwatch returns; handlers check that their VM still wants them (the VM's
// watch id, under its operation lock).

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/io/event_loop.h"
#include "lib/vm/executor.h"

namespace fcvm::vm {

class Supervisor {
 public:
  // `executor` runs the exit handlers and must outlive the supervisor.
  static absl::StatusOr<std::unique_ptr<Supervisor>> Create(Executor* executor);
  // Stop().
  ~Supervisor();

  // Runs `on_exit(watch id)` (on the executor) once `pidfd` is readable,
  // i.e. the process has exited. The caller keeps `pidfd` open until Unwatch
  // or the handler. Returns the watch id (never 0); 0 once stopped.
  uint64_t Watch(int pidfd, std::function<void(uint64_t)> on_exit);
  // Stops watching; no-op for an unknown or finished watch.
  void Unwatch(uint64_t id);
  // Ends every watch (handlers not yet started never run) and the loop.
  void Stop();

  size_t watching() const;

 private:
  Supervisor(std::unique_ptr<io::EventLoop> loop, Executor* executor)
      : loop_(std::move(loop)), executor_(executor) {}

  std::unique_ptr<io::EventLoop> loop_;
  Executor* const executor_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // Watch id -> the loop's poll op (0 until the loop armed it). Touched by the
  // loop thread and by Unwatch, under mu_.
  absl::flat_hash_map<uint64_t, io::OpId> ops_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fcvm::vm
