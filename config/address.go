package config

import (
	"fmt"
	"net"
	"strconv"
)

func splitHostPort(addr string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%q: host is empty (use 127.0.0.1 for loopback)", addr)
	}
	return host, uint32(p), nil
}
