//go:build tools

// Package tools pins the commands build.py compiles; it is never built itself.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
