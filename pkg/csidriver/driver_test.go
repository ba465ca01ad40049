package csidriver

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
)

func TestParseEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string // "" means an error
	}{
		{"unix:///a/b", "/a/b"},
		{"unix:/a/b", "/a/b"},
		{"unix:///csi/csi.sock", "/csi/csi.sock"},
		{"unix:///a/../b/./c", "/b/c"},
		{"unix:////a", "/a"},
		{"unix://a", ""},
		{"unix://a/b", ""},
		{"unix:a", ""},
		{"unix:", ""},
		{"unix://", ""},
		{"tcp://127.0.0.1:10000", ""},
		{"/a/b", ""},
		{"UNIX:///a", ""},
		{"", ""},
	}
	for _, tc := range tests {
		got, err := ParseEndpoint(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseEndpoint(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestSocketMode(t *testing.T) {
	t.Parallel()
	tests := []struct{ dir, want uint32 }{
		{0o777, 0o666},
		{0o750, 0o660},
		{0o2777, 0o666},
		{0o1777, 0o666},
		{0o4755, 0o666},
		{0o700, 0o600},
		{0o070, 0o060},
		{0o007, 0o006},
		{0o001, 0o006},
		{0o711, 0o666},
		{0o000, 0o000},
		{0o040777, 0o666}, // with S_IFDIR, as from stat
	}
	for _, tc := range tests {
		if got := socketMode(tc.dir); got != tc.want {
			t.Errorf("socketMode(%#o) = %#o, want %#o", tc.dir, got, tc.want)
		}
	}
}

func TestSanitize(t *testing.T) {
	t.Parallel()
	req := validRequest()
	req.VolumeContext[ctxTokens] = `{"sts.amazonaws.com":{"token":"SECRET","expirationTimestamp":"x"}}`
	orig := proto.Clone(req)
	got := sanitize(req)
	p, ok := got.(*csi.NodePublishVolumeRequest)
	if !ok {
		t.Fatalf("sanitize returned %T", got)
	}
	if p == req {
		t.Fatalf("sanitize returned the original request: it must copy before changing")
	}
	if strings.Contains(p.VolumeContext[ctxTokens], "SECRET") {
		t.Errorf("token not stripped: %q", p.VolumeContext[ctxTokens])
	}
	if !proto.Equal(req, orig) {
		t.Errorf("sanitize modified the original request: %v", req)
	}
	if p.VolumeContext[AttrSocketName] != req.VolumeContext[AttrSocketName] || p.TargetPath != req.TargetPath {
		t.Errorf("sanitize changed other fields: %v", p)
	}
	if strings.Contains(p.String(), "SECRET") {
		t.Errorf("sanitized request still shows the token: %v", p)
	}

	// Without tokens, and for other requests, nothing changes.
	plain := validRequest()
	if got := sanitize(plain); got != any(plain) {
		t.Errorf("sanitize copied a request without tokens")
	}
	un := &csi.NodeUnpublishVolumeRequest{VolumeId: "v"}
	if got := sanitize(un); got != any(un) {
		t.Errorf("sanitize changed an unpublish request")
	}
	if got := sanitize(nil); got != nil {
		t.Errorf("sanitize(nil) = %v", got)
	}
}

func TestKeyedLocksSameKeySerialized(t *testing.T) {
	t.Parallel()
	var k keyedLocks
	unlockA := k.Lock("target")

	acquired := make(chan func())
	go func() { acquired <- k.Lock("target") }()

	// Wait (without sleeping) until the second Lock has registered and is
	// blocked on the key's mutex.
	waitFor(t, func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.locks["target"] != nil && k.locks["target"].refs == 2
	})
	select {
	case u := <-acquired:
		u()
		t.Fatal("a second Lock of the same key returned while the first was held")
	default:
	}
	unlockA()
	unlockB := <-acquired
	unlockB()
	k.mu.Lock()
	n := len(k.locks)
	k.mu.Unlock()
	if n != 0 {
		t.Errorf("%d lock entries left after every unlock", n)
	}
}

func TestKeyedLocksDifferentKeysParallel(t *testing.T) {
	t.Parallel()
	var k keyedLocks
	unlockA := k.Lock("a")
	defer unlockA()
	done := make(chan struct{})
	go func() {
		k.Lock("b")()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a deadlock detector, not a timing assertion
		t.Fatal("Lock of another key waited for a held key")
	}
}

func TestKeyedLocksMutualExclusion(t *testing.T) {
	t.Parallel()
	var k keyedLocks
	const workers, rounds = 8, 200
	var inside [3]atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				key := i % len(inside)
				unlock := k.Lock(string(rune('a' + key)))
				if n := inside[key].Add(1); n != 1 {
					t.Errorf("%d holders of key %d at once", n, key)
				}
				runtime.Gosched()
				inside[key].Add(-1)
				unlock()
			}
		}()
	}
	wg.Wait()
	if len(k.locks) != 0 {
		t.Errorf("%d lock entries left", len(k.locks))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a hang detector only
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never became true")
		}
		runtime.Gosched()
	}
}

func testSpec(t *testing.T, mutate ...func(*csi.NodePublishVolumeRequest)) *publishSpec {
	t.Helper()
	req := validRequest()
	for _, m := range mutate {
		m(req)
	}
	s, err := parsePublish(testKubeletDir, req)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStateStoreRoundTrip(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a", "state")
	st, err := newStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if ents, err := st.List(); err != nil || len(ents) != 0 {
		t.Fatalf("List(empty) = %v, %v", ents, err)
	}
	a := testSpec(t, withContext(AttrMountOptions, `ro,fsname=a\,b`))
	b := testSpec(t, func(r *csi.NodePublishVolumeRequest) {
		r.TargetPath = strings.Replace(testTarget, testVolName, "other", 1)
		r.VolumeCapability.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"noexec"}}}
	})
	for _, s := range []*publishSpec{a, b, a} { // saving twice overwrites
		if err := st.Save(s); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		t.Fatalf("List = %d entries, want 2: %+v", len(ents), ents)
	}
	byTarget := map[string]*publishSpec{}
	for _, e := range ents {
		if e.Err != nil {
			t.Fatalf("entry %s: %v", e.Path, e.Err)
		}
		if fi, err := os.Stat(e.Path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("state file %s: %v, %v; want mode 0600", e.Path, fi.Mode(), err)
		}
		byTarget[e.Spec.TargetPath] = e.Spec
	}
	for _, want := range []*publishSpec{a, b} {
		got := byTarget[want.TargetPath]
		if got == nil {
			t.Fatalf("no entry for %s", want.TargetPath)
		}
		if !got.sameVolume(want) || got.TargetPath != want.TargetPath || got.PodName != want.PodName ||
			got.PodNamespace != want.PodNamespace || got.Ephemeral != want.Ephemeral {
			t.Errorf("read back %+v, want %+v", got, want)
		}
		// What was saved passes validation again (as Recover does).
		again, err := parsePublish(testKubeletDir, got.request())
		if err != nil {
			t.Errorf("saved spec no longer parses: %v", err)
		} else if again.options != want.options {
			t.Errorf("options after restore = %+v, want %+v", again.options, want.options)
		}
	}
	if err := st.Delete(a.TargetPath); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(a.TargetPath); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}
	if ents, _ := st.List(); len(ents) != 1 || ents[0].Spec.TargetPath != b.TargetPath {
		t.Errorf("List after Delete = %+v", ents)
	}
}

func TestStateStoreBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := newStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	good := testSpec(t)
	if err := st.Save(good); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("corrupt.json", []byte(`{"volumeID":`))
	write("wrongtype.json", []byte(`{"volumeID":1}`))
	write("huge.json", []byte(`{"volumeID":"`+strings.Repeat("x", maxStateFile)+`"}`))
	// Exactly at the limit is fine.
	pad := maxStateFile - len(`{"volumeID":"v"}`)
	write("limit.json", []byte(`{"volumeID":"v"}`+strings.Repeat(" ", pad)))
	write(".tmp-123456", []byte("partial"))
	write(".tmp-999.json", []byte("partial"))
	write("notes.txt", []byte("ignored"))
	if err := os.Mkdir(filepath.Join(dir, "dir.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}

	ents, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]stateEntry{}
	for _, e := range ents {
		got[filepath.Base(e.Path)] = e
	}
	for _, name := range []string{"corrupt.json", "wrongtype.json", "huge.json"} {
		e, ok := got[name]
		if !ok {
			t.Errorf("%s not reported", name)
			continue
		}
		if e.Err == nil || e.Spec != nil {
			t.Errorf("%s: spec %v, err %v; want an error and no spec", name, e.Spec, e.Err)
		}
	}
	if e := got["huge.json"]; e.Err != nil && !strings.Contains(e.Err.Error(), "larger") {
		t.Errorf("huge.json error %v does not say it is too large", e.Err)
	}
	if e, ok := got["limit.json"]; !ok || e.Err != nil || e.Spec == nil || e.Spec.VolumeID != "v" {
		t.Errorf("limit.json (exactly %d bytes) = %+v", maxStateFile, e)
	}
	for _, name := range []string{"dir.json", "link.json", "notes.txt", ".tmp-123456", ".tmp-999.json"} {
		if _, ok := got[name]; ok {
			t.Errorf("%s listed as a state entry", name)
		}
	}
	for _, name := range []string{".tmp-123456", ".tmp-999.json"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("leftover %s not removed: %v", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Errorf("an unrelated file was removed: %v", err)
	}
	if e, ok := got[filepath.Base(st.file(good.TargetPath))]; !ok || e.Err != nil || e.Spec.TargetPath != good.TargetPath {
		t.Errorf("the good entry: %+v", e)
	}
}

func TestStateStoreFileName(t *testing.T) {
	t.Parallel()
	st := &stateStore{dir: "/state"}
	a, b := st.file(testTarget), st.file(testTarget+"x")
	if a == b {
		t.Errorf("two targets map to one file %s", a)
	}
	if filepath.Dir(a) != "/state" || !strings.HasSuffix(a, ".json") || strings.HasPrefix(filepath.Base(a), ".tmp-") {
		t.Errorf("file(%q) = %q", testTarget, a)
	}
	// A hostile target path cannot steer the file name.
	if f := st.file("../../etc/passwd"); filepath.Dir(f) != "/state" {
		t.Errorf("file(../../etc/passwd) = %q", f)
	}
}
