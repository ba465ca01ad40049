package csidriver

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/faultinject"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fdpassing"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/fusemount"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/metrics"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/safefs"
)

// volume is a published volume: the socket in the pod's emptyDir, and the
// loop that mounts FUSE for whoever of the pod connects.
type volume struct {
	d    *Driver
	spec *publishSpec
	log  klog.Logger

	// emptyDir is a handle on the pod's emptyDir; the socket is created and
	// removed through it, never by path.
	emptyDir *safefs.Dir
	ln       *net.UnixListener
	done     chan struct{}

	mu      sync.Mutex
	closing bool
	conn    *net.UnixConn // the connection being handled
	// connected: a FUSE process got a mount since the volume was published
	// (or one was found served at a driver restart); only before that does
	// the pending timeout apply.
	connected bool
	// mounted: the last mount handed over is believed served.
	mounted bool
	// failure says why the socket was closed while the volume stays
	// published (the pending timeout); the next NodePublishVolume reports it.
	failure error
	timer   *time.Timer

	// mountMu serializes what changes the mounts at the target: a handover
	// and the watcher's placeholder. stopped (under mountMu) ends the watcher.
	mountMu  sync.Mutex
	stopped  bool
	watching bool
	// quit is closed by stop, so the watcher ends at once.
	quit     chan struct{}
	quitOnce sync.Once
}

// watchInterval is how often a served volume's FUSE connection is checked.
const watchInterval = 2 * time.Second

func volumeLogger(spec *publishSpec) klog.Logger {
	return klog.LoggerWithValues(klog.Background(),
		"pod", klog.KRef(spec.PodNamespace, spec.PodName), "podUID", spec.PodUID,
		"volume", spec.target.VolumeName, "volumeID", spec.VolumeID)
}

// socketMode gives the socket the access the emptyDir gives: whoever may use
// the directory (owner, group, others) may connect.
func socketMode(dirMode uint32) uint32 {
	var m uint32
	for _, shift := range []uint{6, 3, 0} {
		if dirMode>>shift&7 != 0 {
			m |= 6 << shift
		}
	}
	return m
}

// serve accepts connections one at a time until stop. One at a time bounds
// what a pod can make the driver hold, and a handshake has a deadline.
func (v *volume) serve() {
	defer close(v.done)
	for {
		conn, err := v.ln.AcceptUnix()
		if err != nil {
			v.mu.Lock()
			closing := v.closing
			v.mu.Unlock()
			if closing {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ECONNABORTED) {
				v.log.Error(err, "accepting a connection on the fd-passing socket; retrying")
				time.Sleep(100 * time.Millisecond)
				continue
			}
			v.log.Error(err, "fd-passing socket failed; the volume can no longer be served until it is published again")
			return
		}
		v.mu.Lock()
		if v.closing {
			v.mu.Unlock()
			conn.Close()
			return
		}
		v.conn = conn
		v.mu.Unlock()

		v.handle(conn)

		v.mu.Lock()
		v.conn = nil
		v.mu.Unlock()
		conn.Close()
	}
}

// stop closes the socket and any connection in progress and waits for the
// serve loop to end; after it returns no new mount can appear.
func (v *volume) stop() {
	v.mountMu.Lock()
	v.stopped = true
	v.mountMu.Unlock()
	v.quitOnce.Do(func() { close(v.quit) })
	v.mu.Lock()
	v.closing = true
	if v.conn != nil {
		v.conn.Close()
	}
	if v.timer != nil {
		v.timer.Stop()
	}
	v.mu.Unlock()
	if v.ln != nil {
		v.ln.Close()
		<-v.done
	}
}

// handle serves one connection: read the request, mount, hand the fd over.
func (v *volume) handle(conn *net.UnixConn) {
	start := time.Now()
	cred, err := peerCred(conn)
	if err != nil {
		v.log.Error(err, "reading the peer's credentials")
		return
	}
	log := klog.LoggerWithValues(v.log, "peerPID", cred.Pid, "peerUID", cred.Uid)
	fail := func(err error, msg string) {
		log.Error(err, msg)
		resp := &fdpassing.Response{Error: fmt.Sprintf("%s: %v", msg, err)}
		if serr := fdpassing.SendResponse(conn, resp, -1, time.Now().Add(time.Second)); serr != nil {
			log.V(4).Info("could not tell the client", "err", serr)
		}
	}

	req, err := fdpassing.ReceiveRequest(conn, start.Add(v.d.cfg.HandshakeTimeout))
	if err != nil {
		v.d.m.Refused(metrics.ReasonBadRequest)
		fail(err, "refused a connection")
		return
	}
	log = klog.LoggerWithValues(log, "client", req.Client)
	realTarget := v.d.realTarget(v.spec.target.RelPath())
	openTarget := v.d.targetOpener(v.spec.target)
	if req.Op == fdpassing.OpUnmount {
		// The FUSE program is shutting down (fusermount3 -u): end its
		// connection so it exits, but keep the mount where it is, so that a
		// restarted FUSE container's new mount is stacked on it and reaches
		// the app containers. NodeUnpublishVolume removes the mounts.
		found, err := v.d.unmounter.Abort(realTarget, openTarget)
		if err != nil {
			fail(err, "ending the FUSE connection at the FUSE program's request")
			return
		}
		if found {
			v.d.m.Aborted(metrics.CauseFusermount, 1)
		}
		v.setMounted(false)
		log.Info("ended the FUSE connection at the FUSE program's request (fusermount3 -u)", "target", v.spec.TargetPath, "mounted", found)
		if err := fdpassing.SendResponse(conn, &fdpassing.Response{}, -1, time.Now().Add(time.Second)); err != nil {
			log.V(4).Info("could not tell the client", "err", err)
		}
		return
	}
	opts := v.spec.options
	if req.MountOptions != "" {
		extra, err := mountoptions.Parse(req.MountOptions)
		if err != nil {
			v.d.m.Refused(metrics.ReasonBadOptions)
			fail(err, "refused the FUSE program's mount options")
			return
		}
		opts = opts.Merge(extra)
	}

	v.mountMu.Lock()
	defer v.mountMu.Unlock()
	recovering := false
	top, err := fusemount.TopMount(realTarget, openTarget)
	if err != nil {
		fail(err, "reading the mount at the target")
		return
	}
	switch {
	case top != nil && top.IsFUSE():
		// A FUSE container that crashed and was restarted by kubelet connects
		// again. If the old connection is dead, the new mount goes on top of
		// the dead one instead of replacing it: the app containers have a
		// bind of the old mount (HostToContainer makes them slaves of it), so
		// only a mount stacked on it reaches them. Unpublish removes all.
		health, err := fusemount.Check(openTarget, time.Second)
		switch {
		case err != nil:
			fail(err, "checking the FUSE mount at the target")
			return
		case health == fusemount.Serving:
			v.d.m.Refused(metrics.ReasonAlreadyServed)
			fail(errors.New("a FUSE mount is already served at the target"), "refused a second FUSE server for the volume")
			return
		case health == fusemount.Unresponsive:
			v.d.m.Refused(metrics.ReasonAlreadyServed)
			fail(errors.New("the FUSE server of the mount at the target does not answer"), "refused a second FUSE server for the volume")
			return
		}
		recovering = true
		log.Info("the volume's FUSE server is gone; mounting anew over the dead mount for the reconnected FUSE process", "target", v.spec.TargetPath)
	case top != nil:
		recovering = true
		log.Info("mounting anew over the placeholder of a dead FUSE mount for the reconnected FUSE process", "target", v.spec.TargetPath)
	}
	target, err := openTarget()
	if err != nil {
		fail(err, "opening the target directory")
		return
	}
	defer target.Close()
	res, err := fusemount.Mount(&fusemount.Request{
		Target: target, UID: cred.Uid, GID: cred.Gid,
		ReadOnly: v.spec.ReadOnly || opts.ReadOnly(), Options: opts,
	})
	if err != nil {
		v.d.m.Handover(false)
		fail(err, "mounting FUSE")
		return
	}
	faultinject.Point("after-mount")
	mountedAt := time.Now()
	// The ID of the mount just made, so that a failed handover removes it
	// and nothing else (below it may be a dead mount the app containers'
	// binds hold, on which a later reconnect stacks).
	newMount := -1
	if h, err := openTarget(); err == nil {
		newMount, _ = fusemount.MountID(h)
		h.Close()
	}
	resp := &fdpassing.Response{MountData: res.Data, ReadOnly: v.spec.ReadOnly || opts.ReadOnly()}
	err = fdpassing.SendResponse(conn, resp, int(res.Dev.Fd()), time.Now().Add(5*time.Second))
	// The FUSE server holds the only copy from now on: if it dies, the
	// kernel ends the connection instead of waiting for us.
	res.Dev.Close()
	if err != nil {
		v.d.m.Handover(false)
		log.Error(err, "handing the /dev/fuse fd over failed; unmounting")
		if done, uerr := v.d.unmounter.UnmountTopIf(realTarget, newMount, openTarget); uerr != nil {
			log.Error(uerr, "unmounting after a failed handover")
		} else if done {
			v.d.m.Aborted(metrics.CauseHandoverFailed, 1)
		}
		return
	}
	faultinject.Point("after-send")
	v.d.m.Handover(true)
	if recovering {
		v.d.m.Recovered()
	}
	v.mu.Lock()
	v.connected, v.mounted = true, true
	if v.timer != nil {
		v.timer.Stop()
	}
	v.mu.Unlock()
	log.Info("mounted and handed over FUSE fd", "target", v.spec.TargetPath, "mountData", res.Data,
		"mountDuration", mountedAt.Sub(start), "handoverDuration", time.Since(start))
	v.startWatchLocked()
}

// startWatchLocked starts the watcher unless it runs; the caller holds mountMu.
func (v *volume) startWatchLocked() {
	if v.watching || v.stopped {
		return
	}
	v.watching = true
	go v.watch()
}

// watch checks the served FUSE connection every watchInterval; when it is
// dead (the FUSE container crashed or exited) it covers it with a
// placeholder, so that kubelet can create the restarted FUSE container,
// whose new mount is then stacked on top. It ends with the volume, or once
// the top mount is no longer a FUSE mount.
func (v *volume) watch() {
	realTarget := v.d.realTarget(v.spec.target.RelPath())
	openTarget := v.d.targetOpener(v.spec.target)
	// A statfs blocked by a stopped server is waited for, never repeated:
	// one blocked goroutine per volume at most.
	var pending <-chan error
	for {
		select {
		case <-time.After(watchInterval):
		case <-v.quit:
		}
		v.mountMu.Lock()
		if v.stopped {
			v.watching = false
			v.mountMu.Unlock()
			return
		}
		v.mountMu.Unlock()
		if pending == nil {
			pending = fusemount.StatfsAsync(openTarget)
		}
		var health fusemount.Health
		select {
		case err := <-pending:
			pending = nil
			if health, err = fusemount.Classify(err); err != nil {
				continue
			}
		case <-time.After(5 * time.Second):
			continue
		case <-v.quit:
			continue // ends at the check of stopped above
		}
		if health != fusemount.Dead {
			continue
		}
		v.mountMu.Lock()
		top, err := fusemount.TopMount(realTarget, openTarget)
		if v.stopped || err != nil || top == nil || !top.IsFUSE() {
			v.watching = false
			v.mountMu.Unlock()
			return
		}
		// Checked again under mountMu: a reconnect may have stacked a new mount.
		if h, _ := fusemount.Check(openTarget, time.Second); h == fusemount.Dead {
			target, err := openTarget()
			if err == nil {
				err = fusemount.MountPlaceholder(target)
				target.Close()
			}
			v.setMounted(false)
			if err != nil {
				v.log.Error(err, "covering the dead FUSE mount")
			} else {
				v.d.m.Covered()
				v.log.Info("the volume's FUSE server is gone; covered its mount with a placeholder until the FUSE container reconnects", "target", v.spec.TargetPath)
			}
			v.watching = false
			v.mountMu.Unlock()
			return
		}
		v.mountMu.Unlock()
	}
}

func (v *volume) setMounted(m bool) {
	v.mu.Lock()
	v.mounted = m
	v.mu.Unlock()
}

// startPendingTimer arms the pending timeout of a volume no FUSE process
// has connected to yet.
func (v *volume) startPendingTimer() {
	if v.d.cfg.PendingTimeout <= 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.connected && !v.closing {
		v.timer = time.AfterFunc(v.d.cfg.PendingTimeout, v.pendingExpired)
	}
}

// pendingExpired closes the socket of a volume whose FUSE process never
// connected, and records why: kubelet republishes the volume (the CSIDriver
// has requiresRepublish), and that NodePublishVolume reports the reason in
// the pod's events and makes the socket again.
func (v *volume) pendingExpired() {
	unlock := v.d.locks.Lock(v.spec.TargetPath)
	defer unlock()
	v.d.mu.Lock()
	current := v.d.volumes[v.spec.TargetPath] == v
	v.d.mu.Unlock()
	v.mu.Lock()
	if !current || v.closing || v.connected || v.failure != nil {
		v.mu.Unlock()
		return
	}
	if v.conn != nil {
		// A client is in its handshake: look again once it must be done.
		v.timer = time.AfterFunc(v.d.cfg.HandshakeTimeout+time.Second, v.pendingExpired)
		v.mu.Unlock()
		return
	}
	v.failure = fmt.Errorf("no FUSE process connected to the fd-passing socket %q in emptyDir %q within %s (--pending-timeout): "+
		"check that the pod's FUSE container runs fuse-starter or fusermount3-proxy with that socket path (mountPath of the emptyDir + %q) and read its logs",
		v.spec.SocketName, v.spec.EmptyDirName, v.d.cfg.PendingTimeout, "/"+v.spec.SocketName)
	v.closing = true // from here a connection accepted meanwhile is dropped unserved
	v.mu.Unlock()
	v.stop()
	if err := v.emptyDir.RemoveSocket(v.spec.SocketName); err != nil {
		v.log.Error(err, "removing the fd-passing socket")
	}
	v.d.m.PendingTimeout()
	v.log.Info("closed the socket of a volume whose FUSE process never connected; the next NodePublishVolume reports it and makes the socket again",
		"target", v.spec.TargetPath, "timeout", v.d.cfg.PendingTimeout)
}

func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}
