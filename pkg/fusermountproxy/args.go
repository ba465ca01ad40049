// Package fusermountproxy is a stand-in for libfuse's fusermount3 helper in
// an unprivileged FUSE container: instead of opening /dev/fuse and mounting
// (which needs privileges the container does not have) it asks
// meta-fuse-csi-plugin for the mount over the pod's socket and hands the fd
// back to the FUSE library exactly as fusermount3 does.
package fusermountproxy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pfnet-research/meta-fuse-csi-plugin/pkg/mountoptions"
)

// Invocation is a parsed fusermount3 command line.
type Invocation struct {
	Mountpoint string
	// Options are the -o options in order, split on unescaped commas.
	Options     []string
	Unmount     bool
	Lazy        bool
	Quiet       bool
	AutoUnmount bool
	Version     bool
	Help        bool
}

// maxArgs bounds the command line; fusermount3's callers pass a handful.
const maxArgs = 64

// ParseArgs parses fusermount3's command line (without argv[0]) the way its
// getopt_long("hVo:uzqU") does: short options may be grouped ("-uqz") and
// may come before or after the mountpoint, "-oOPTS" and "-o OPTS" both
// work, long forms --unmount --lazy --quiet --help --version --options=
// --auto-unmount are accepted, and "--" ends the options. -o may be given
// more than once; the lists are joined. auto_unmount inside -o sets
// AutoUnmount and is removed from Options.
func ParseArgs(args []string) (*Invocation, error) {
	if len(args) > maxArgs {
		return nil, fmt.Errorf("too many arguments (%d)", len(args))
	}
	inv := &Invocation{}
	var positional []string
	addOpts := func(s string) error {
		opts, err := mountoptions.Split(s)
		if err != nil {
			return err
		}
		for _, o := range opts {
			if o == "" {
				return fmt.Errorf("empty mount option in -o %q", s)
			}
			if o == "auto_unmount" {
				inv.AutoUnmount = true
				continue
			}
			inv.Options = append(inv.Options, o)
		}
		if len(inv.Options) > mountoptions.MaxOptions {
			return fmt.Errorf("too many mount options (%d)", len(inv.Options))
		}
		if n := len(inv.DriverOptions()); n > mountoptions.MaxOptionsLen {
			return fmt.Errorf("mount options are %d bytes long; at most %d are allowed", n, mountoptions.MaxOptionsLen)
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			positional = append(positional, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, value, hasValue := strings.Cut(a[2:], "=")
			switch name {
			case "unmount":
				inv.Unmount = true
			case "lazy":
				inv.Lazy = true
			case "quiet":
				inv.Quiet = true
			case "help":
				inv.Help = true
			case "version":
				inv.Version = true
			case "auto-unmount":
				inv.AutoUnmount = true
			case "options":
				if !hasValue {
					if i+1 >= len(args) {
						return nil, errors.New("option --options needs an argument")
					}
					i++
					value = args[i]
				}
				if err := addOpts(value); err != nil {
					return nil, err
				}
				continue
			default:
				return nil, fmt.Errorf("unknown option %q", a)
			}
			if hasValue {
				return nil, fmt.Errorf("option --%s takes no argument", name)
			}
		case len(a) > 1 && a[0] == '-':
			for j := 1; j < len(a); j++ {
				switch a[j] {
				case 'u':
					inv.Unmount = true
				case 'z':
					inv.Lazy = true
				case 'q':
					inv.Quiet = true
				case 'h':
					inv.Help = true
				case 'V':
					inv.Version = true
				case 'U':
					inv.AutoUnmount = true
				case 'o':
					value := a[j+1:]
					if value == "" {
						if i+1 >= len(args) {
							return nil, errors.New("option -o needs an argument")
						}
						i++
						value = args[i]
					}
					if err := addOpts(value); err != nil {
						return nil, err
					}
					j = len(a)
				default:
					return nil, fmt.Errorf("unknown option -%c", a[j])
				}
			}
		default:
			positional = append(positional, a)
		}
	}
	if inv.Help || inv.Version {
		return inv, nil
	}
	switch len(positional) {
	case 0:
		return nil, errors.New("missing mountpoint argument")
	case 1:
		inv.Mountpoint = positional[0]
	default:
		return nil, fmt.Errorf("extra arguments after the mountpoint: %q", positional[1:])
	}
	if inv.Mountpoint == "" || strings.IndexByte(inv.Mountpoint, 0) >= 0 {
		return nil, errors.New("invalid mountpoint argument")
	}
	return inv, nil
}

// helperOnly are options that mean something to fusermount3 itself, not to
// the kernel: the driver would refuse them, so they are not sent.
var helperOnly = map[string]bool{"auto_unmount": true, "nonempty": true}

// DriverOptions returns the options to send to the driver, comma separated
// with commas inside values escaped again.
func (inv *Invocation) DriverOptions() string {
	var out []string
	for _, o := range inv.Options {
		name, _, _ := strings.Cut(o, "=")
		if helperOnly[name] || name == "user" {
			continue
		}
		out = append(out, strings.ReplaceAll(strings.ReplaceAll(o, `\`, `\\`), ",", `\,`))
	}
	return strings.Join(out, ",")
}
