package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// dirKinds are the <kind>s of makeDir, so that SweepStale never touches a /tmp/mfcp-*
// directory that is not the harness's.
var dirKinds = map[string]bool{
	"bin": true, "kubelet": true, "pv": true, "home": true, "drv": true, "sshd": true,
	"fusectl": true, "dir": true, "leak": true,
}

// SweepStale cleans up after harness users (test processes, the demo) that died without
// running their cleanups, e.g. after a go test -timeout panic: it SIGKILLs processes tagged
// with the pid of a dead harness user (those that escaped the parent-death signal by
// daemonizing), then, for every /tmp/mfcp-<kind>-<pid>-* directory whose pid is dead, aborts
// and detaches whatever is mounted there and removes it. Directories of live processes,
// including other test packages running in parallel, are left alone. Call it from TestMain
// before m.Run.
func SweepStale() error {
	var errs []error
	alive := func(pid int) bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		return err == nil
	}
	if ps, err := ListProcs(); err == nil {
		for _, p := range ps {
			if p.HarnessPid > 0 && p.HarnessPid != os.Getpid() && !alive(p.HarnessPid) && p.State != "Z" {
				syscall.Kill(p.Pid, syscall.SIGCONT)
				syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		}
	} else {
		errs = append(errs, err)
	}
	dirs, err := filepath.Glob(filepath.Join(tmpRoot, tmpPrefix+"*"))
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		// mfcp-<kind>-<pid>-<random>
		parts := strings.Split(filepath.Base(dir), "-")
		if len(parts) != 4 || !dirKinds[parts[1]] {
			continue
		}
		pid, err := strconv.Atoi(parts[2])
		if err != nil || pid <= 0 || pid == os.Getpid() || alive(pid) {
			continue
		}
		if err := removeDirSafely(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("SweepStale: %w", err)
	}
	return nil
}
