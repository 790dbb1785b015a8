#pragma once

// The warm pool: Firecracker processes started ahead of time, unconfigured,
// each with its VM id and directory ready, so that a clone (or a boot) skips
// process start-up. A refill thread keeps `size` of them, holding back (up to
// kRefillHoldBack) while clones are being restored: starting a Firecracker
// takes a core for several milliseconds, which a restore needs more.
//
// A VM made from a pooled process outlives fcvmd like any other (no
// parent-death signal). Stop() kills the unused ones; after a crash, the
// next fcvmd's start-up reconcile kills them (they have no VM record): see
// docs/operations.md.
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/vm/env.h"

namespace fcvm::vm {

inline constexpr absl::Duration kRefillHoldBack = absl::Milliseconds(200);

class WarmPool {
 public:
  struct Process {
    std::string id;   // the VM id it was started with
    std::string dir;  // its VM directory (drives/ made)
    std::unique_ptr<Vmm> vmm;
  };
  // How a pooled process is made: the id and directory are the pool's; the
  // spec the caller's (bind mounts, or a jail with its uid leased).
  using SpecFor = std::function<absl::StatusOr<LaunchSpec>(const std::string& id, const std::string& dir)>;
  // Called with the id of a pooled process that is discarded (died, or the
  // pool stopped) after it was killed: releases what SpecFor took (a jail).
  using OnDiscard = std::function<void(const std::string& id)>;

  // Starts the refill thread unless `size` is 0. `vmms` outlives the pool.
  WarmPool(VmmFactory* vmms, std::string vms_dir, uint32_t size, SpecFor spec_for,
           OnDiscard on_discard = nullptr);
  // Stop().
  ~WarmPool();

  // A pooled process that is still alive, or nullopt (pool empty or off).
  std::optional<Process> Take();

  // Restores running now: the refill holds back while any is.
  void RestoreBegin() { restoring_.fetch_add(1); }
  void RestoreEnd() { restoring_.fetch_sub(1); }

  // Joins the refill thread and kills what is pooled. Idempotent.
  void Stop();

  size_t ready() const;
  // Waits until `n` processes are ready (true) or `timeout` passed.
  bool AwaitReady(size_t n, absl::Duration timeout) const;
  uint64_t misses() const { return misses_.load(); }

 private:
  void RefillLoop();
  void Discard(Process& p);

  VmmFactory* const vmms_;
  const std::string vms_dir_;
  const uint32_t size_;
  const SpecFor spec_for_;
  const OnDiscard on_discard_;

  mutable absl::Mutex mu_;
  std::deque<Process> ready_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> restoring_{0};
  std::atomic<uint64_t> misses_{0};
  std::thread refiller_;
};

}  // namespace fcvm::vm
