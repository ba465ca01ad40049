package harness

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcInfo describes one process as seen in /proc.
type ProcInfo struct {
	Pid, PPid, PGid, Sid int
	// UID is the real uid.
	UID int
	// State is the one-letter state from /proc/<pid>/stat ("R", "S", "D", "T", "Z", ...).
	State string
	// Cmdline is the command line with arguments separated by spaces (the comm name in
	// brackets for kernel threads and zombies).
	Cmdline string
	// HarnessPid is the value of TagEnv in the process's initial environment: the pid of
	// the test process whose harness started it (or an ancestor that passed its environment
	// on), 0 if none.
	HarnessPid int
	// Tagged is true when HarnessPid is this test process.
	Tagged bool
}

func (p ProcInfo) String() string {
	return fmt.Sprintf("pid=%d ppid=%d pgid=%d uid=%d state=%s cmd=%q", p.Pid, p.PPid, p.PGid, p.UID, p.State, p.Cmdline)
}

// ListProcs returns every process on the machine (those that vanish while being read are
// skipped).
func ListProcs() ([]ProcInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("reading /proc: %w", err)
	}
	var out []ProcInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	return out, nil
}

func readProc(pid int) (ProcInfo, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return ProcInfo{}, false
	}
	// "pid (comm) S ppid pgrp session ..."; comm may contain spaces and parentheses.
	s := string(stat)
	lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if lp < 0 || rp < lp {
		return ProcInfo{}, false
	}
	comm := s[lp+1 : rp]
	f := strings.Fields(s[rp+1:])
	if len(f) < 4 {
		return ProcInfo{}, false
	}
	p := ProcInfo{Pid: pid, State: f[0], UID: -1}
	p.PPid, _ = strconv.Atoi(f[1])
	p.PGid, _ = strconv.Atoi(f[2])
	p.Sid, _ = strconv.Atoi(f[3])
	if status, err := os.ReadFile(dir + "/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				if fs := strings.Fields(v); len(fs) > 0 {
					p.UID, _ = strconv.Atoi(fs[0])
				}
				break
			}
		}
	}
	if cl, err := os.ReadFile(dir + "/cmdline"); err == nil && len(cl) > 0 {
		p.Cmdline = strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))
	} else {
		p.Cmdline = "[" + comm + "]"
	}
	if env, err := os.ReadFile(dir + "/environ"); err == nil {
		prefix := []byte(TagEnv + "=")
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, prefix); ok {
				p.HarnessPid, _ = strconv.Atoi(string(v))
				p.Tagged = p.HarnessPid == os.Getpid()
				break
			}
		}
	}
	return p, true
}

// ProcsOf returns the live (non-zombie) processes whose real uid is uid; with the pod-side
// uid 65534 this is a quick "did anything of the pod survive" check when nothing else on the
// machine runs as that user.
func ProcsOf(uid int) ([]ProcInfo, error) {
	all, err := ListProcs()
	if err != nil {
		return nil, err
	}
	var out []ProcInfo
	for _, p := range all {
		if p.UID == uid && p.State != "Z" {
			out = append(out, p)
		}
	}
	return out, nil
}

// HarnessProcs returns the live (non-zombie) processes that this test process started
// through the harness or that descend from it: those tagged with TagEnv, plus every
// descendant of the test process (which catches children whose environment was cleared, as
// go-fuse does for its fusermount helper). Zombies are left out: they are dead, and their
// reaper may be a process the test cannot influence.
func HarnessProcs() ([]ProcInfo, error) {
	all, err := ListProcs()
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	children := map[int][]int{}
	byPid := map[int]ProcInfo{}
	for _, p := range all {
		children[p.PPid] = append(children[p.PPid], p.Pid)
		byPid[p.Pid] = p
	}
	pick := map[int]bool{}
	for _, p := range all {
		if p.Tagged {
			pick[p.Pid] = true
		}
	}
	for _, d := range descendantsIn(self, children) {
		pick[d] = true
	}
	delete(pick, self)
	var out []ProcInfo
	for pid := range pick {
		if p := byPid[pid]; p.State != "Z" {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	return out, nil
}

// descendants returns the pids of all descendants of pid (not pid itself), from one
// snapshot of /proc.
func descendants(pid int) []int {
	if pid <= 0 {
		return nil
	}
	all, err := ListProcs()
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, p := range all {
		children[p.PPid] = append(children[p.PPid], p.Pid)
	}
	return descendantsIn(pid, children)
}

func descendantsIn(pid int, children map[int][]int) []int {
	var out []int
	seen := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, c := range children[cur] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// groupMembers returns the live processes of process group pgid.
func groupMembers(pgid int) []ProcInfo {
	all, err := ListProcs()
	if err != nil {
		return nil
	}
	var out []ProcInfo
	for _, p := range all {
		if p.PGid == pgid && p.State != "Z" {
			out = append(out, p)
		}
	}
	return out
}

// LeakCheck makes the test fail if, when it ends, a process started by the harness during
// the test is still alive or something is still mounted under a directory the harness
// created during the test. Call it first in a test, so that its cleanup runs last, after
// every other harness cleanup had its chance. Processes and mounts that already existed
// when LeakCheck was called (for example a shared sshd started in TestMain) are ignored.
// Leftover processes are reported and then killed, so that one leaking test does not break
// the next.
func LeakCheck(t T) {
	t.Helper()
	before := map[int]bool{}
	if ps, err := HarnessProcs(); err == nil {
		for _, p := range ps {
			before[p.Pid] = true
		}
	} else {
		t.Fatalf("LeakCheck: listing processes: %v", err)
	}
	mountsBefore := map[int]bool{}
	if ms, err := readMounts(); err == nil {
		for _, m := range ms {
			mountsBefore[m.ID] = true
		}
	} else {
		t.Fatalf("LeakCheck: %v", err)
	}
	t.Cleanup(func() {
		var problems []string

		// Processes that were just SIGKILLed by other cleanups may need a moment to be
		// gone from /proc; poll, bounded, until the set of new ones is empty.
		var leaked []ProcInfo
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leaked[:0]
			ps, err := HarnessProcs()
			if err != nil {
				problems = append(problems, fmt.Sprintf("listing processes: %v", err))
				break
			}
			for _, p := range ps {
				if !before[p.Pid] {
					leaked = append(leaked, p)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(leaked) > 0 {
			var lines []string
			for _, p := range leaked {
				lines = append(lines, "  "+p.String())
				syscall.Kill(p.Pid, syscall.SIGCONT)
				syscall.Kill(p.Pid, syscall.SIGKILL)
			}
			problems = append(problems, "processes left running (now killed):\n"+strings.Join(lines, "\n"))
		}

		ms, err := readMounts()
		if err != nil {
			problems = append(problems, err.Error())
		}
		var left []string
		for _, m := range ms {
			if mountsBefore[m.ID] {
				continue
			}
			for _, d := range ownedDirList() {
				if m.Mountpoint == d || strings.HasPrefix(m.Mountpoint, d+"/") {
					left = append(left, fmt.Sprintf("  %s (%s, id %d)", m.Mountpoint, m.FSType, m.ID))
					break
				}
			}
		}
		if len(left) > 0 {
			problems = append(problems, "mounts left under harness directories:\n"+strings.Join(left, "\n"))
		}
		if len(problems) > 0 {
			t.Fatalf("LeakCheck: %s", strings.Join(problems, "\n"))
		}
	})
}
