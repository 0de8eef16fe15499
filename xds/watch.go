package xds

import (
	"context"
	"crypto/sha256"
	"os"
	"time"

	"github.com/infergate/infergate/config"
)

// watch polls the config file (modification time, size, then content
// hash: robust to editors that replace the file and to file systems
// without change notification) and applies each new content once.
func (s *Server) watch(ctx context.Context) {
	if s.configPath == "" || s.cfg.XDS.WatchInterval <= 0 {
		return
	}
	var (
		lastMod  time.Time
		lastSize int64 = -1
		lastSum  [32]byte
	)
	if data, err := os.ReadFile(s.configPath); err == nil {
		lastSum = sha256.Sum256(data)
	}
	if fi, err := os.Stat(s.configPath); err == nil {
		lastMod, lastSize = fi.ModTime(), fi.Size()
	}
	tick := time.NewTicker(s.cfg.XDS.WatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fi, err := os.Stat(s.configPath)
		if err != nil || (fi.ModTime().Equal(lastMod) && fi.Size() == lastSize) {
			continue
		}
		lastMod, lastSize = fi.ModTime(), fi.Size()
		data, err := os.ReadFile(s.configPath)
		if err != nil {
			continue
		}
		sum := sha256.Sum256(data)
		if sum == lastSum {
			continue
		}
		lastSum = sum
		s.reload(data)
	}
}

// reload applies new file content; a refused file names the line of each
// problem and changes nothing.
func (s *Server) reload(data []byte) (int, error) {
	cfg, err := config.Parse(s.configPath, data)
	if err != nil {
		err = config.WithLines(data, err)
		s.mu.Lock()
		defer s.mu.Unlock()
		return 0, s.rejectLocked("file", err)
	}
	now, was := cfg.XDS, s.cfg.XDS
	if now.Listen != was.Listen || now.Admin != was.Admin || now.AdminTokenFile != was.AdminTokenFile || now.Kubeconfig != was.Kubeconfig ||
		now.WatchInterval != was.WatchInterval || now.History != was.History || now.HeartbeatTTL != was.HeartbeatTTL {
		s.log.Warn("changes to xds.listen, admin, admin_token_file, kubeconfig, watch_interval, history and heartbeat_ttl take effect at the next start; routing changes apply now")
	}
	return s.applyDescribed(modelOf(cfg), "file", s.configPath, func(err error) error {
		return config.WithLines(data, err)
	})
}
