#pragma once

// fcvmctl command lines -> fcvm.v1 requests. Nothing here talks to fcvmd, so
// every check a user can fail before a call is made is unit-testable.
//
// Each Parse* function registers its command's options on `flags` (which may
// already hold fcvmctl's global options), parses `args` (the words after the
// command name), validates them and builds the request. The options it
// registers point at locals of the function: afterwards `flags` is good only
// for help_requested() and Help(), never for another Parse().
//
// Errors are InvalidArgument with one line naming the option or argument at
// fault ("--backend: unknown memory backend 'foo' (want uffd or file)"). When
// the arguments hold --help, flags.help_requested() is true, the positional
// checks are skipped and the returned request is meaningless.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cli/top.h"
#include "fcvm/v1/snapshot.pb.h"
#include "fcvm/v1/system.pb.h"
#include "fcvm/v1/vm.pb.h"
#include "lib/base/flags.h"

namespace fcvm::cli {

using Args = std::vector<std::string>;

// Building blocks, exposed for tests.

// "K=V" pairs (the values of a repeated --label) -> a map. `flag` ("--label")
// prefixes the error: a word without '=', an empty key, a key given twice.
absl::StatusOr<std::map<std::string, std::string>> ParseLabels(const std::vector<std::string>& specs,
                                                               absl::string_view flag);

// "ID=PATH[,ro][,root]" -> a Drive. PATH is made absolute (AbsolutePath). A
// path containing ',' cannot be written this way.
absl::StatusOr<fcvm::v1::Drive> ParseDrive(absl::string_view spec);
// "8080:80", "5353:53/udp".
absl::StatusOr<fcvm::v1::PortMapping> ParsePublish(absl::string_view spec);

// Names as printed by fcvmctl, case-insensitive: "running", "paused", ...
absl::StatusOr<fcvm::v1::VmState> ParseVmState(absl::string_view name);
// "uffd" | "file".
absl::StatusOr<fcvm::v1::MemoryBackend> ParseMemoryBackend(absl::string_view name);
// "none" | "2M" (case-insensitive).
absl::StatusOr<fcvm::v1::HugePages> ParseHugePages(absl::string_view name);
// "auto" | "none" | "record" | "prefetch".
absl::StatusOr<fcvm::v1::PrefetchPolicy> ParsePrefetchPolicy(absl::string_view name);
// "resume" | "pause" | "stop".
absl::StatusOr<fcvm::v1::AfterSnapshot> ParseAfterSnapshot(absl::string_view name);

// fcvmd resolves paths in its own working directory, so relative paths given
// to fcvmctl are made absolute against fcvmctl's. Empty stays empty.
std::string AbsolutePath(const std::string& path);

// One function per command.

// run --kernel PATH [--initrd PATH] [--boot-args S] [--vcpus N]
//     [--memory-mib N] [--huge-pages none|2M] [--drive ID=PATH[,ro][,root]]... [--name N]
//     [--label K=V]... [--net]
absl::StatusOr<fcvm::v1::RunVmRequest> ParseRunVm(FlagParser& flags, const Args& args);
// get REF
absl::StatusOr<fcvm::v1::GetVmRequest> ParseGetVm(FlagParser& flags, const Args& args);
// ls [--label K=V]... [--state S]... [--snapshot REF] [--pss]
absl::StatusOr<fcvm::v1::ListVmsRequest> ParseListVms(FlagParser& flags, const Args& args);
// top [--interval DURATION] [--sort KEY] [--pss] [--iterations N]
//     [--label K=V]... [--snapshot REF]
absl::StatusOr<TopOptions> ParseTop(FlagParser& flags, const Args& args);
// pause REF
absl::StatusOr<fcvm::v1::PauseVmRequest> ParsePauseVm(FlagParser& flags, const Args& args);
// resume REF
absl::StatusOr<fcvm::v1::ResumeVmRequest> ParseResumeVm(FlagParser& flags, const Args& args);
// rm REF... [--force] [--grace DURATION]: one request per REF, in order.
absl::StatusOr<std::vector<fcvm::v1::DeleteVmRequest>> ParseDeleteVms(FlagParser& flags, const Args& args);

// snapshot create VM_REF [--name N] [--label K=V]... [--after resume|pause|stop]
absl::StatusOr<fcvm::v1::CreateSnapshotRequest> ParseCreateSnapshot(FlagParser& flags, const Args& args);
// snapshot ls [--label K=V]...
absl::StatusOr<fcvm::v1::ListSnapshotsRequest> ParseListSnapshots(FlagParser& flags, const Args& args);
// snapshot get REF
absl::StatusOr<fcvm::v1::GetSnapshotRequest> ParseGetSnapshot(FlagParser& flags, const Args& args);
// snapshot rm REF [--force]
absl::StatusOr<fcvm::v1::DeleteSnapshotRequest> ParseDeleteSnapshot(FlagParser& flags, const Args& args);
// clone SNAPSHOT_REF [--count N] [--backend uffd|file]
//       [--prefetch auto|none|record|prefetch] [--name-prefix P]
//       [--label K=V]... [--stay-paused] [--all-or-nothing] [--parallelism N]
absl::StatusOr<fcvm::v1::CloneSnapshotRequest> ParseCloneSnapshot(FlagParser& flags, const Args& args);
absl::StatusOr<fcvm::v1::ForkVmRequest> ParseForkVm(FlagParser& flags, const Args& args);
// vsock VM_REF PORT [--connect-timeout D]
struct VsockRequest {
  fcvm::v1::GetVmRequest vm;
  uint32_t port = 0;
  absl::Duration connect_timeout = absl::Seconds(5);
};
absl::StatusOr<VsockRequest> ParseVsock(FlagParser& flags, const Args& args);
// metadata get VM_REF
absl::StatusOr<fcvm::v1::GetVmMetadataRequest> ParseGetVmMetadata(FlagParser& flags, const Args& args);
// metadata set VM_REF FILE|- (the file is read here)
absl::StatusOr<fcvm::v1::SetVmMetadataRequest> ParseSetVmMetadata(FlagParser& flags, const Args& args);

// version
absl::StatusOr<fcvm::v1::GetVersionRequest> ParseGetVersion(FlagParser& flags, const Args& args);
// stats [VM_REF]
absl::StatusOr<fcvm::v1::GetPageServerStatsRequest> ParseGetPageServerStats(FlagParser& flags,
                                                                            const Args& args);
// watch [REF]
absl::StatusOr<fcvm::v1::WatchEventsRequest> ParseWatchEvents(FlagParser& flags, const Args& args);

}  // namespace fcvm::cli
