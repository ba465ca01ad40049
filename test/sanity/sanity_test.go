package sanity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	csisanity "github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pfnet-research/meta-fuse-csi-plugin/test/harness"
)

// The volumeAttributes every volume of the fake controller carries (TestVolumeParameters).
const (
	emptyDirName = "fuse-fd-passing"
	socketName   = "sanity.sock"
	// volName is the pod's CSI volume: each spec gets a pod of its own, so one name suffices.
	volName = "sanity-vol"
)

// skipPrefix starts the message of every spec this test skips, so that a skip by csi-sanity
// itself (a capability it did not find) is told apart and fails the test: the list below
// must stay complete and explicit.
const skipPrefix = "meta-fuse-csi-plugin: "

// skips lists the csi-sanity specs that do not apply to this node-only driver (no
// Controller service, no NodeStage, no NodeGetVolumeStats, no expansion, no health). An
// entry skips every spec whose full text starts with match. Each entry must match at least
// one spec, so that a renamed spec in a newer csi-test is noticed. README.md ("csi-sanity")
// repeats this list.
var skips = []struct{ match, reason string }{
	{"Controller Service [Controller Server]", "no Controller service: volumes are inline ephemeral or static PVs"},
	{"ListSnapshots [Controller Server]", "no Controller service (snapshots)"},
	{"GetSnapshot [Controller Server]", "no Controller service (snapshots)"},
	{"DeleteSnapshot [Controller Server]", "no Controller service (snapshots)"},
	{"CreateSnapshot [Controller Server]", "no Controller service (snapshots)"},
	{"ExpandVolume [Controller Server]", "no Controller service (expansion)"},
	{"ModifyVolume [Controller Server]", "no Controller service (VolumeAttributesClass)"},
	{"ControllerGetVolumeHealth [Controller Server]", "no Controller service (volume health)"},
	{"ControllerListVolumeHealth [Controller Server]", "no Controller service (volume health)"},
	{"GroupController Service [GroupController Server]", "no GroupController service"},
	{"GroupController Service [GroupController VolumeGroupSnapshots]", "no GroupController service"},
	{"Node Service NodePublishVolume with single node multi writer capability", "no SINGLE_NODE_MULTI_WRITER node capability"},
	{"Node Service NodeStageVolume", "no STAGE_UNSTAGE_VOLUME node capability: the driver publishes directly"},
	{"Node Service NodeUnstageVolume", "no STAGE_UNSTAGE_VOLUME node capability: the driver publishes directly"},
	{"Node Service NodeGetVolumeStats", "no GET_VOLUME_STATS node capability"},
	{"Node Service NodeExpandVolume", "no EXPAND_VOLUME node capability"},
	{"Node Service NodeGetVolumeHealth", "no GET_VOLUME_HEALTH node capability"},
	{"Node Service NodeGetStorageHealth", "no GET_STORAGE_HEALTH node capability"},
	{"Node Service should work", "csi-sanity runs it only when the driver's own Identity advertises CONTROLLER_SERVICE; publish and unpublish of a real volume run in \"NodeUnpublishVolume should remove target path\""},
	{"Node Service should be idempotent", "csi-sanity runs it only when the driver's own Identity advertises CONTROLLER_SERVICE; idempotent republish is tested by test/integration TestRepublishAndSecondConnection"},
}

// gT lets harness helpers run inside ginkgo nodes: a failure while the suite runs fails the
// current spec (t.Fatalf must not be called outside the test's goroutine), later (in the
// cleanups, which run in the test's goroutine) it fails the test.
type gT struct {
	t       *testing.T
	inSuite atomic.Bool
}

func (g *gT) Helper()                    { ginkgo.GinkgoHelper() }
func (g *gT) Logf(f string, args ...any) { g.t.Logf(f, args...) }
func (g *gT) Cleanup(f func())           { g.t.Cleanup(f) }
func (g *gT) TempDir() string            { return g.t.TempDir() }
func (g *gT) Failed() bool               { return g.t.Failed() }
func (g *gT) Fatalf(f string, args ...any) {
	if g.inSuite.Load() {
		ginkgo.Fail(fmt.Sprintf(f, args...))
	}
	g.t.Fatalf(f, args...)
}

// targets plays kubelet for csi-sanity's target directories. csi-sanity publishes at
// TargetPath+"/target", with TargetPath from the CreateTargetDir hook; kubelet publishes at
// <kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount, the only layout the driver
// accepts. The hook returns the parent <...>/kubernetes.io~csi/<volume> of a fresh pod, and
// the client interceptor renames the last component "target" of a path under such a parent
// to "mount"; nothing else in any request is changed.
type targets struct {
	k *harness.Kubelet
	t *gT

	mu      sync.Mutex
	n       int
	current *harness.Pod            // the pod of the running spec
	parents map[string]*harness.Pod // hook-created parents
}

// create is the CreateTargetDir hook: a new pod with the fd-passing emptyDir, and the
// target's parent with vol_data.json, as kubelet prepares them before NodePublishVolume.
func (ts *targets) create(string) (string, error) {
	ts.mu.Lock()
	ts.n++
	n := ts.n
	ts.mu.Unlock()
	pod := ts.k.NewPod(ts.t, fmt.Sprintf("sanity-%d", n))
	pod.AddEmptyDir(emptyDirName)
	pod.PublishRequest(volName, nil, false) // creates the parent and vol_data.json
	parent := filepath.Dir(pod.TargetPath(volName))
	ts.mu.Lock()
	ts.current = pod
	ts.parents[parent] = pod
	ts.mu.Unlock()
	return parent, nil
}

// remove is the RemoveTargetPath hook: what kubelet does after an unpublish. It fails the
// spec if the target is still mounted (csi-sanity ignores the hook's error).
func (ts *targets) remove(parent string) error {
	ts.mu.Lock()
	pod := ts.parents[parent]
	delete(ts.parents, parent)
	if ts.current == pod {
		ts.current = nil
	}
	ts.mu.Unlock()
	if pod == nil {
		ginkgo.Fail(fmt.Sprintf("RemoveTargetPath(%s): not a target parent made by CreateTargetDir", parent))
	}
	if err := pod.RemoveTarget(volName); err != nil {
		ginkgo.Fail(fmt.Sprintf("RemoveTargetPath: %v", err))
	}
	return nil
}

// kubeletPath maps csi-sanity's <parent>/target to kubelet's <parent>/mount; other paths
// are returned unchanged.
func (ts *targets) kubeletPath(p string) string {
	if filepath.Base(p) != "target" {
		return p
	}
	ts.mu.Lock()
	_, ok := ts.parents[filepath.Dir(p)]
	ts.mu.Unlock()
	if !ok {
		return p
	}
	return filepath.Join(filepath.Dir(p), "mount")
}

// check is the CheckPath hook, on the kubelet path; Lstat, never stat: a FUSE mount there
// could hang.
func (ts *targets) check(p string) (csisanity.PathKind, error) {
	fi, err := os.Lstat(ts.kubeletPath(p))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return csisanity.PathIsNotFound, nil
	case err != nil:
		return "", err
	case fi.IsDir():
		return csisanity.PathIsDir, nil
	case fi.Mode().IsRegular():
		return csisanity.PathIsFile, nil
	default:
		return csisanity.PathIsOther, nil
	}
}

// interceptor rewrites the target paths of the requests csi-sanity sends to the driver.
// The driver's answers to NodePublishVolume and NodeUnpublishVolume go to GinkgoWriter (shown
// for a failed spec, or with -ginkgo.v), so that one can see that each spec was refused for
// the reason it tests.
func (ts *targets) interceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	logged := true
	switch r := req.(type) {
	case *csi.NodePublishVolumeRequest:
		if p := ts.kubeletPath(r.GetTargetPath()); p != r.GetTargetPath() {
			r = proto.Clone(r).(*csi.NodePublishVolumeRequest)
			r.TargetPath = p
			req = r
		}
	case *csi.NodeUnpublishVolumeRequest:
		if p := ts.kubeletPath(r.GetTargetPath()); p != r.GetTargetPath() {
			r = proto.Clone(r).(*csi.NodeUnpublishVolumeRequest)
			r.TargetPath = p
			req = r
		}
	default:
		logged = false
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	if logged {
		st := status.Convert(err)
		fmt.Fprintf(ginkgo.GinkgoWriter, "driver %s: %v %s\n", path.Base(method), st.Code(), st.Message())
	}
	return err
}

// fakeController is the Controller service csi-sanity's node specs need for CreateVolume:
// the driver has none. It returns a volume whose volume_context is what kubelet sends for a
// static PV of this driver: the volumeAttributes (the StorageClass parameters csi-sanity
// passes, TestVolumeParameters) plus the pod information of podInfoOnMount for the pod whose
// target the running spec uses. Its Identity service answers with the driver's.
type fakeController struct {
	csi.UnimplementedControllerServer
	csi.UnimplementedIdentityServer
	ts       *targets
	identity csi.IdentityClient
}

func (f *fakeController) GetPluginInfo(ctx context.Context, req *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return f.identity.GetPluginInfo(ctx, req)
}

func (f *fakeController) GetPluginCapabilities(ctx context.Context, req *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return f.identity.GetPluginCapabilities(ctx, req)
}

func (f *fakeController) Probe(ctx context.Context, req *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return f.identity.Probe(ctx, req)
}

func (f *fakeController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}},
	}}}, nil
}

func (f *fakeController) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities is missing")
	}
	f.ts.mu.Lock()
	pod := f.ts.current
	f.ts.mu.Unlock()
	if pod == nil {
		return nil, status.Error(codes.FailedPrecondition, "fake controller: no target directory (pod) for the running spec")
	}
	vc := map[string]string{
		harness.CtxPodName:        pod.Name,
		harness.CtxPodNamespace:   pod.Namespace,
		harness.CtxPodUID:         pod.UID,
		harness.CtxServiceAccount: pod.ServiceAccount,
		harness.CtxEphemeral:      "false",
	}
	for k, v := range req.GetParameters() {
		vc[k] = v
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      "sanity-" + req.GetName(),
		CapacityBytes: req.GetCapacityRange().GetRequiredBytes(),
		VolumeContext: vc,
	}}, nil
}

func (f *fakeController) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (f *fakeController) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" || len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_id or volume_capabilities is missing")
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

// startFakeController serves the fake controller on a Unix socket until the test ends.
func startFakeController(t *testing.T, ts *targets, d *harness.Driver) string {
	t.Helper()
	sock := filepath.Join(harness.NewDir(t, 0o700), "controller.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	f := &fakeController{ts: ts, identity: d.Identity}
	csi.RegisterIdentityServer(srv, f)
	csi.RegisterControllerServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return "unix:" + sock
}

func TestSanity(t *testing.T) {
	if err := harness.Requirements(); err != nil {
		t.Skip("needs root and /dev/fuse: ", err)
	}
	start := time.Now()
	harness.LeakCheck(t)
	bins := &harness.Bins{Driver: harness.BuildPackage(t, harness.DriverPkg)}
	k := harness.NewKubelet(t)
	d := harness.StartDriver(t, k, bins)
	g := &gT{t: t}
	ts := &targets{k: k, t: g, parents: map[string]*harness.Pod{}}

	cfg := csisanity.NewTestConfig()
	cfg.Address = d.Endpoint
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithUnaryInterceptor(ts.interceptor))
	cfg.ControllerAddress = startFakeController(t, ts, d)
	// The value only has to be non-empty: the hooks decide the real paths.
	cfg.TargetPath = filepath.Join(k.Dir, "sanity-target")
	cfg.CreateTargetDir = ts.create
	cfg.RemoveTargetPath = ts.remove
	cfg.CheckPath = ts.check
	cfg.StagingPath = "" // no NodeStageVolume: nothing to create
	cfg.TestVolumeParameters = map[string]string{"fdPassingEmptyDirName": emptyDirName, "fdPassingSocketName": socketName}

	// Top-level nodes run before the nodes csi-sanity registers, so a skipped spec never
	// reaches csi-sanity's setup.
	used := make([]bool, len(skips))
	ginkgo.BeforeEach(func() {
		text := ginkgo.CurrentSpecReport().FullText()
		for i, s := range skips {
			if strings.HasPrefix(text, s.match) {
				used[i] = true
				ginkgo.Skip(skipPrefix + s.reason)
			}
		}
	})
	var mu sync.Mutex
	var reports []types.SpecReport
	ginkgo.ReportAfterEach(func(r types.SpecReport) {
		mu.Lock()
		reports = append(reports, r)
		mu.Unlock()
	})

	g.inSuite.Store(true)
	csisanity.Test(t, cfg)
	g.inSuite.Store(false)

	counts := map[types.SpecState]int{}
	unselected := 0
	var lines []string
	for _, r := range reports {
		counts[r.State]++
		line := fmt.Sprintf("%-8s %s", r.State, r.FullText())
		switch r.State {
		case types.SpecStatePassed:
		case types.SpecStatePending: // marked pending (PIt) in csi-sanity itself
		case types.SpecStateSkipped:
			if r.Failure.Message == "" { // not selected by -ginkgo.focus and the like
				counts[types.SpecStateSkipped]--
				unselected++
				continue
			}
			line += " (" + strings.TrimPrefix(r.Failure.Message, skipPrefix) + ")"
			if !strings.HasPrefix(r.Failure.Message, skipPrefix) {
				t.Errorf("csi-sanity skipped %q itself (%s): add it to the explicit skip list with a reason, or make it run", r.FullText(), r.Failure.Message)
			}
		default:
			line += ": " + r.Failure.Message
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	t.Logf("csi-sanity specs:\n%s", strings.Join(lines, "\n"))
	suite, _ := ginkgo.GinkgoConfiguration()
	filtered := len(suite.FocusStrings) > 0 || len(suite.SkipStrings) > 0 || len(suite.FocusFiles) > 0 ||
		len(suite.SkipFiles) > 0 || suite.LabelFilter != ""
	for i, s := range skips {
		if !used[i] && !filtered {
			t.Errorf("skip list entry %q matched no csi-sanity spec: update the list (and README.md)", s.match)
		}
	}
	passed, skipped, pending := counts[types.SpecStatePassed], counts[types.SpecStateSkipped], counts[types.SpecStatePending]
	t.Logf("csi-sanity: %d specs: %d passed, %d skipped, %d pending upstream, %d not selected, %d failed; %v",
		len(reports), passed, skipped, pending, unselected, len(reports)-passed-skipped-pending-unselected, time.Since(start).Round(time.Millisecond))
	if passed == 0 && !filtered {
		t.Errorf("no csi-sanity spec passed")
	}
}
