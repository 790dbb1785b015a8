#pragma once

// nftables through libnftables: fcvm writes its own rule text and hands it to
// nft_run_cmd_from_buffer, which applies a buffer as one atomic transaction.
//
// The ruleset changed is that of the calling thread's network namespace (run
// it inside RunInNetns for a VM namespace). Calls are serialized process-wide:
// libnftables keeps some global state.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fcvm::net {

// Runs `commands` (nft syntax, one transaction) and returns what nft printed.
// Internal with nft's own error text (which quotes the offending line) when it
// is rejected; `what` prefixes the message ("add nat rules for vm-1").
absl::StatusOr<std::string> RunNft(const std::string& commands, const std::string& what);

// Names of the `family` ("ip") tables in the calling thread's namespace.
absl::StatusOr<std::vector<std::string>> ListNftTables(const std::string& family);

// Deletes table `family name`; OK when it does not exist (nft 1.0.6 has no
// "destroy", so the table is added and deleted in one transaction).
absl::Status DeleteNftTable(const std::string& family, const std::string& name);

}  // namespace fcvm::net
