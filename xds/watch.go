package xds

import (
	"context"
	"crypto/sha256"
	"os"
	"time"

	"github.com/infergate/infergate/config"
)

// watch polls the config file and applies each new content once. It
// compares content, not modification time and size: a same-size rewrite
// within the file system's timestamp granularity (a few milliseconds)
// would otherwise go unseen, and a config file is small enough to read
// every interval.
func (s *Server) watch(ctx context.Context) {
	if s.configPath == "" || s.cfg.XDS.WatchInterval <= 0 {
		return
	}
	last := s.fileSum
	tick := time.NewTicker(s.cfg.XDS.WatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		data, err := os.ReadFile(s.configPath)
		if err != nil {
			continue
		}
		if sum := sha256.Sum256(data); sum != last {
			last = sum
			s.reload(data)
		}
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
		now.WatchInterval != was.WatchInterval || now.History != was.History || now.HeartbeatTTL != was.HeartbeatTTL ||
		registrationGrace(now) != registrationGrace(was) {
		s.log.Warn("changes to xds.listen, admin, admin_token_file, kubeconfig, watch_interval, history, heartbeat_ttl and registration_grace take effect at the next start; routing changes apply now")
	}
	return s.applyDescribed(modelOf(cfg), "file", s.configPath, func(err error) error {
		return config.WithLines(data, err)
	})
}
