// Package manifests checks deploy/, the Helm chart and examples/ for the
// contract users rely on, and that the chart renders the same objects as
// deploy/.
package manifests

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const driverName = "meta-fuse-csi-plugin.csi.storage.pfn.io"

type obj = map[string]any

func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// decode splits a multi-document YAML stream into objects.
func decode(t *testing.T, data []byte) []obj {
	t.Helper()
	var out []obj
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var o obj
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("YAML: %v\n%s", err, doc)
		}
		if len(o) > 0 {
			out = append(out, o)
		}
	}
	return out
}

func decodeFiles(t *testing.T, pattern string) []obj {
	t.Helper()
	files, _ := filepath.Glob(pattern)
	if len(files) == 0 {
		t.Fatalf("no files match %s", pattern)
	}
	var out []obj
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, decode(t, b)...)
	}
	return out
}

// get walks a path of map keys and list indexes.
func get(o any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := o.(obj)
			if !ok {
				return nil
			}
			o = m[k]
		case int:
			l, ok := o.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			o = l[k]
		}
	}
	return o
}

func find(objs []obj, kind string) obj {
	for _, o := range objs {
		if o["kind"] == kind {
			return o
		}
	}
	return nil
}

func container(spec any, list, name string) obj {
	for _, c := range get(spec, list).([]any) {
		if c.(obj)["name"] == name {
			return c.(obj)
		}
	}
	return nil
}

func TestDeploy(t *testing.T) {
	objs := decodeFiles(t, filepath.Join(root(), "deploy", "*.yaml"))
	if ns := find(objs, "Namespace"); ns == nil || get(ns, "metadata", "name") != "mfcp-system" {
		t.Errorf("no Namespace mfcp-system")
	}
	d := find(objs, "CSIDriver")
	if d == nil || get(d, "metadata", "name") != driverName {
		t.Fatalf("no CSIDriver %s", driverName)
	}
	for k, want := range map[string]any{"attachRequired": false, "podInfoOnMount": true, "fsGroupPolicy": "None", "requiresRepublish": true} {
		if got := get(d, "spec", k); got != want {
			t.Errorf("CSIDriver spec.%s = %v, want %v", k, got, want)
		}
	}
	if got := get(d, "spec", "volumeLifecycleModes"); !reflect.DeepEqual(got, []any{"Ephemeral", "Persistent"}) {
		t.Errorf("volumeLifecycleModes = %v", got)
	}
	ds := find(objs, "DaemonSet")
	if ds == nil || get(ds, "metadata", "namespace") != "mfcp-system" {
		t.Fatalf("no DaemonSet in mfcp-system")
	}
	spec := get(ds, "spec", "template", "spec")
	drv := container(spec, "containers", "meta-fuse-csi-plugin")
	if drv == nil || get(drv, "securityContext", "privileged") != true {
		t.Fatalf("driver container missing or not privileged")
	}
	var bidi bool
	for _, m := range get(drv, "volumeMounts").([]any) {
		if get(m, "mountPath") == "/var/lib/kubelet/pods" && get(m, "mountPropagation") == "Bidirectional" {
			bidi = true
		}
	}
	if !bidi {
		t.Errorf("kubelet pods dir not mounted at the same path with Bidirectional propagation")
	}
	if get(drv, "livenessProbe") == nil {
		t.Errorf("no liveness probe")
	}
	if container(spec, "containers", "node-driver-registrar") == nil {
		t.Errorf("no node-driver-registrar sidecar")
	}
}

// The chart renders the objects of deploy/ (labels aside), with the
// sidecar or with the driver's own registration.
func TestChartRendersDeploy(t *testing.T) {
	helm, err := exec.LookPath("helm")
	if err != nil {
		if os.Getenv("MFCP_REQUIRE_PROGRAMS") == "1" {
			t.Fatal("helm is not installed (hack/install-test-deps.sh builds it)")
		}
		t.Skip("helm is not installed (hack/install-test-deps.sh builds it)")
	}
	chart := filepath.Join(root(), "charts", "meta-fuse-csi-plugin")
	if out, err := exec.Command(helm, "lint", "--strict", chart).CombinedOutput(); err != nil && !strings.Contains(string(out), "0 chart(s) failed") {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	want := decodeFiles(t, filepath.Join(root(), "deploy", "*.yaml"))
	for _, builtin := range []bool{false, true} {
		out, err := exec.Command(helm, "template", "mfcp", chart, "-n", "mfcp-system", "--set", "registrar.builtin="+map[bool]string{false: "false", true: "true"}[builtin]).Output()
		if err != nil {
			t.Fatalf("helm template: %v", err)
		}
		got := decode(t, out)
		if a, b := strip(find(got, "CSIDriver")), strip(find(want, "CSIDriver")); !reflect.DeepEqual(a, b) {
			t.Errorf("CSIDriver differs:\nchart  %v\ndeploy %v", js(a), js(b))
		}
		wantDS := strip(find(want, "DaemonSet"))
		if builtin {
			wantDS = builtinRegistrar(wantDS)
		}
		if a := strip(find(got, "DaemonSet")); !reflect.DeepEqual(a, wantDS) {
			t.Errorf("DaemonSet (builtin registrar %v) differs:\nchart  %s\ndeploy %s", builtin, js(a), js(wantDS))
		}
	}
}

// strip drops what legitimately differs: labels and selectors (Helm adds
// its own), and the namespace (the release's).
func strip(o obj) obj {
	var c obj
	b, _ := json.Marshal(o)
	json.Unmarshal(b, &c)
	delete(get(c, "metadata").(obj), "labels")
	delete(get(c, "metadata").(obj), "namespace")
	if s, ok := get(c, "spec").(obj); ok {
		delete(s, "selector")
		if tm, ok := get(s, "template", "metadata").(obj); ok {
			delete(tm, "labels")
		}
	}
	return c
}

// builtinRegistrar is deploy/'s DaemonSet as the driver's own registration
// changes it (what the chart's registrar.builtin and the E2E's patch do).
func builtinRegistrar(ds obj) obj {
	spec := get(ds, "spec", "template", "spec").(obj)
	var drv obj
	for _, c := range spec["containers"].([]any) {
		if c.(obj)["name"] == "meta-fuse-csi-plugin" {
			drv = c.(obj)
		}
	}
	spec["containers"] = []any{drv}
	drv["args"] = append(drv["args"].([]any), "--register-with-kubelet",
		"--kubelet-registration-path=/var/lib/kubelet/plugins/"+driverName+"/csi.sock")
	drv["volumeMounts"] = append(drv["volumeMounts"].([]any), obj{"name": "registration-dir", "mountPath": "/var/lib/kubelet/plugins_registry"})
	return ds
}

func js(o any) string {
	b, _ := json.MarshalIndent(o, "", " ")
	return string(b)
}

// Every example follows the contract: pod mfcp-example-<mode>-<impl>, a FUSE
// sidecar "starter" that is a native sidecar with a startupProbe, an app
// "busybox" that is not root, the CSI volume with its attributes naming an
// emptyDir the sidecar mounts, and a socket path that matches them.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(root(), "examples", "*", "*", "deploy*.yaml"))
	if len(files) < 10 {
		t.Fatalf("only %d example manifests", len(files))
	}
	for _, f := range files {
		rel, _ := filepath.Rel(filepath.Join(root(), "examples"), f)
		t.Run(rel, func(t *testing.T) {
			parts := strings.Split(rel, string(filepath.Separator))
			mode, impl := parts[0], parts[1]
			b, _ := os.ReadFile(f)
			pod := decode(t, b)[0]
			if name := get(pod, "metadata", "name"); name != "mfcp-example-"+mode+"-"+impl {
				t.Errorf("pod name %v", name)
			}
			spec := get(pod, "spec")
			starter := container(spec, "initContainers", "starter")
			if starter == nil || starter["restartPolicy"] != "Always" || starter["startupProbe"] == nil {
				t.Fatalf("no native sidecar \"starter\" with a startupProbe")
			}
			if get(starter, "securityContext", "runAsNonRoot") != true || get(starter, "securityContext", "privileged") == true {
				t.Errorf("the FUSE container must run unprivileged and non-root")
			}
			app := container(spec, "containers", "busybox")
			if app == nil || get(app, "securityContext", "runAsNonRoot") != true {
				t.Fatalf("no non-root app container \"busybox\"")
			}
			var attrs obj
			var csiName string
			emptyDirs := map[string]bool{}
			for _, v := range get(spec, "volumes").([]any) {
				if get(v, "csi", "driver") == driverName {
					attrs, csiName = get(v, "csi", "volumeAttributes").(obj), get(v, "name").(string)
				}
				if get(v, "emptyDir") != nil {
					emptyDirs[get(v, "name").(string)] = true
				}
			}
			if attrs == nil || !emptyDirs[attrs["fdPassingEmptyDirName"].(string)] {
				t.Fatalf("CSI volume attributes %v do not name an emptyDir of the pod", attrs)
			}
			var sockDir string
			for _, m := range get(starter, "volumeMounts").([]any) {
				if get(m, "name") == attrs["fdPassingEmptyDirName"] {
					sockDir = get(m, "mountPath").(string)
				}
			}
			sock := sockDir + "/" + attrs["fdPassingSocketName"].(string)
			cmd, _ := json.Marshal(starter["command"])
			env, _ := json.Marshal(starter["env"])
			if mode == "starter" && !strings.Contains(string(cmd), `"--fd-passing-socket-path","`+sock+`"`) {
				t.Errorf("fuse-starter is not pointed at %s: %s", sock, cmd)
			}
			if mode == "proxy" && !strings.Contains(string(env), `"FUSERMOUNT3PROXY_FDPASSING_SOCKPATH","value":"`+sock+`"`) {
				t.Errorf("FUSERMOUNT3PROXY_FDPASSING_SOCKPATH is not %s: %s", sock, env)
			}
			for _, c := range []obj{starter, app} {
				for _, m := range get(c, "volumeMounts").([]any) {
					if get(m, "name") == csiName && get(m, "mountPropagation") != "HostToContainer" {
						t.Errorf("container %v mounts the CSI volume without HostToContainer", c["name"])
					}
				}
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), "Dockerfile")); err != nil {
				t.Errorf("no Dockerfile: %v", err)
			}
		})
	}
}
