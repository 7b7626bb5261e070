//go:build tools

// Package tools pins the CNI tools weir's tests run (cnitool, and the
// reference plugins bridge and host-local as an independent peer). The build
// tag keeps this file out of every build; the blank imports keep
// `go mod tidy` from dropping the modules. scripts/cni-build.sh builds them.
package tools

import (
	_ "github.com/containernetworking/cni/cnitool"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
)
