//go:build faultinject

package faultinject

import (
	"os"
	"syscall"
)

// Env names the step at which the process kills itself with SIGKILL.
const Env = "MFCP_FAULT_KILL_AT"

// Point kills the process with SIGKILL when $MFCP_FAULT_KILL_AT names step:
// nothing after it runs, as when the node's OOM killer or a crash strikes.
func Point(step string) {
	if os.Getenv(Env) == step {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is delivered before the step's work goes on
	}
}
