package config

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"
)

// Defaults of the settings Normalize does not name elsewhere.
const (
	DefaultLogFormat  = "text"
	DefaultBackupMode = "async"
)

// Defaults is the configuration before any file, variable or flag: the
// values Normalize fills in for zeros, written out so that --help shows
// them. WriteQuorum stays 0: its default depends on Replicas.
func Defaults() Config {
	return Config{
		Replicas:              DefaultReplicas,
		Address:               DefaultAddress,
		SSHProxyAddress:       DefaultSSHProxyAddress,
		SSHBackendPort:        DefaultSSHBackendPort,
		AdminAddress:          DefaultAdminAddress,
		HealthInterval:        DefaultHealthInterval,
		NodeTimeout:           DefaultNodeTimeout,
		SSHMaxConns:           DefaultSSHMaxConns,
		SSHIdleTimeout:        DefaultSSHIdleTimeout,
		SSHMaxConnsPerAddress: DefaultSSHMaxConnsPerAddress,
		SSHHandshakeTimeout:   DefaultSSHHandshakeTimeout,
		Accounts:              AccountsPerNode,
		Backup:                Backup{Zone: DefaultBackupZone, Mode: DefaultBackupMode},
		ScanInterval:          DefaultScanInterval,
		RepairRate:            DefaultRepairRate,
		RepairByteRate:        DefaultRepairByteRate,
		TombstoneGrace:        DefaultTombstoneGrace,
		ScrubInterval:         DefaultScrubInterval,
		ScrubRate:             DefaultScrubRate,
		BodyIdleTimeout:       DefaultBodyIdleTimeout,
		MaxRequestsPerClient:  DefaultMaxRequestsPerClient,
		MaxRequests:           DefaultMaxRequests,
		MaxConnsPerAddress:    DefaultMaxConnsPerAddress,
		MaxConns:              DefaultMaxConns,
		PostQuorumTimeout:     DefaultPostQuorum,
		LogFormat:             DefaultLogFormat,
	}
}

// setting is one Config field with a flag, as its tags declare it.
type setting struct {
	flag, env, help string
	min1            bool // values below 1 are refused
	size            bool // a byte size: 32MiB, 1GB, 1048576
	zeroOff         bool // 0 means off, stored as -1
	index           []int
}

// settings lists Config's fields that have a flag, in declaration order.
func settings() []setting {
	var out []setting
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			idx := append(slices.Clone(index), i)
			tag := f.Tag.Get("flag")
			if tag == "" {
				if f.Type.Kind() == reflect.Struct {
					walk(f.Type, idx)
				}
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			s := setting{flag: name, env: f.Tag.Get("env"), help: f.Tag.Get("help"), index: idx}
			for _, o := range strings.Split(opts, ",") {
				switch o {
				case "":
				case "min1":
					s.min1 = true
				case "size":
					s.size = true
				case "zero-off":
					s.zeroOff = true
				default:
					panic(fmt.Sprintf("config: field %s: unknown flag option %q", f.Name, o))
				}
			}
			out = append(out, s)
		}
	}
	walk(reflect.TypeFor[Config](), nil)
	return out
}

// flagAnnotation marks the flags a Flags owns: ApplyEnv leaves them to
// Resolve.
const flagAnnotation = "cring-config-setting"

// Flags is the part of a command's flag set that holds Config settings.
type Flags struct {
	fs       *pflag.FlagSet
	settings []setting
	parsed   *Config // what the command line set, over the defaults
}

// BindAll adds a flag for every setting to fs (cring serve).
func BindAll(fs *pflag.FlagSet) *Flags { return bindSettings(fs, settings()) }

// Bind adds the flags of the settings named (their flag names) to fs, for
// a command that takes only some. A name that is no setting panics: it is
// a programming error, caught by any test that builds the command.
func Bind(fs *pflag.FlagSet, names ...string) *Flags {
	all := settings()
	var picked []setting
	for _, n := range names {
		i := slices.IndexFunc(all, func(s setting) bool { return s.flag == n })
		if i < 0 {
			panic(fmt.Sprintf("config: no setting has the flag %q", n))
		}
		picked = append(picked, all[i])
	}
	return bindSettings(fs, picked)
}

func bindSettings(fs *pflag.FlagSet, set []setting) *Flags {
	f := &Flags{fs: fs, settings: set, parsed: new(Config)}
	*f.parsed = Defaults()
	for _, s := range set {
		bindValue(fs, field(f.parsed, s), s)
		if err := fs.SetAnnotation(s.flag, flagAnnotation, []string{s.env}); err != nil {
			panic(err) // the flag was just added
		}
	}
	return f
}

// field is s's field in c, settable.
func field(c *Config, s setting) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(s.index)
}

// bindValue adds s's flag to fs, parsing into v (a field) and showing v's
// current value as the default.
func bindValue(fs *pflag.FlagSet, v reflect.Value, s setting) {
	switch p := v.Addr().Interface().(type) {
	case *string:
		fs.StringVar(p, s.flag, *p, s.help)
	case *bool:
		fs.BoolVar(p, s.flag, *p, s.help)
	case *int:
		if s.min1 {
			fs.Var(atLeastOne{p}, s.flag, s.help)
		} else {
			fs.IntVar(p, s.flag, *p, s.help)
		}
	case *int64:
		if !s.size {
			panic(fmt.Sprintf("config: setting %s: an int64 must be a size", s.flag))
		}
		fs.Var(sizeValue{p}, s.flag, s.help)
	case *float64:
		fs.Float64Var(p, s.flag, *p, s.help)
	case *time.Duration:
		if s.zeroOff {
			fs.Var(offDuration{p}, s.flag, s.help)
		} else {
			fs.DurationVar(p, s.flag, *p, s.help)
		}
	case *[]string:
		fs.StringArrayVar(p, s.flag, *p, s.help)
	default:
		panic(fmt.Sprintf("config: setting %s has an unsupported type %T", s.flag, p))
	}
}

// Resolve builds the configuration: the defaults, then the cring.yaml
// (--config), then CRING_* variables, then the flags given on the command
// line, each replacing what the one before set, lists included; --host
// nodes follow the file's nodes. It starts from scratch each time and
// changes nothing it reads, so a reload resolves exactly as the start did.
// getenv is os.LookupEnv outside tests. The result is not yet normalized.
func (f *Flags) Resolve(getenv func(string) (string, bool)) (*Config, error) {
	c := Defaults()
	// The file's own path can only come from the command line or a variable.
	for _, s := range f.settings {
		if s.flag == "config" {
			if err := f.override(&c, s, getenv); err != nil {
				return nil, err
			}
		}
	}
	if c.File != "" {
		if err := decodeFile(c.File, &c); err != nil {
			return nil, err
		}
	}
	for _, s := range f.settings {
		if err := f.override(&c, s, getenv); err != nil {
			return nil, err
		}
	}
	for _, h := range c.Hosts {
		// The file's 0 is the default, as Normalize reads it later.
		n, err := NodeFromHost(h, cmp.Or(c.SSHBackendPort, DefaultSSHBackendPort))
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	return &c, nil
}

// override sets s in c from the command line if it was given there, else
// from its variable if that is set and not empty.
func (f *Flags) override(c *Config, s setting, getenv func(string) (string, bool)) error {
	dst := field(c, s)
	if fl := f.fs.Lookup(s.flag); fl != nil && fl.Changed {
		v := field(f.parsed, s)
		if v.Kind() == reflect.Slice {
			v = reflect.AppendSlice(reflect.MakeSlice(v.Type(), 0, v.Len()), v) // c must not share the flag's list
		}
		dst.Set(v)
		return nil
	}
	raw, ok := getenv(s.env)
	if !ok || raw == "" {
		return nil
	}
	// The variable parses exactly as the flag does: a throwaway flag
	// bound to c's field.
	tmp := pflag.NewFlagSet(s.env, pflag.ContinueOnError)
	bindValue(tmp, dst, s)
	if err := setFromEnv(tmp.Lookup(s.flag).Value, raw); err != nil {
		return fmt.Errorf("%s=%q: %w", s.env, raw, err)
	}
	return nil
}

// setFromEnv gives a flag's value a variable's: lists are comma-separated
// and replace the list, whatever it held.
func setFromEnv(v pflag.Value, raw string) error {
	if sv, ok := v.(pflag.SliceValue); ok {
		parts := strings.Split(raw, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return sv.Replace(parts)
	}
	return v.Set(strings.TrimSpace(raw))
}

// EnvName is a flag's CRING_* variable.
func EnvName(flag string) string {
	return "CRING_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ApplyEnv sets each flag of fs that the command line did not give from
// its CRING_* variable, for the flags that are not Config settings (a
// command's own, such as cring node's); Resolve reads the settings' ones.
// It reports the flags set either way. Lists replace, never append: it may
// run more than once on one flag set.
func ApplyEnv(fs *pflag.FlagSet, getenv func(string) (string, bool)) (map[string]bool, error) {
	set := map[string]bool{}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if _, ok := f.Annotations[flagAnnotation]; ok || err != nil {
			return
		}
		if f.Changed {
			set[f.Name] = true
			return
		}
		raw, ok := getenv(EnvName(f.Name))
		if !ok || raw == "" {
			return
		}
		if serr := setFromEnv(f.Value, raw); serr != nil {
			err = fmt.Errorf("%s=%q: %w", EnvName(f.Name), raw, serr)
			return
		}
		set[f.Name] = true
	})
	return set, err
}

// atLeastOne is an int flag that refuses values below 1 (N and W: 0 is
// the default only in the file, where it means "not set").
type atLeastOne struct{ p *int }

func (v atLeastOne) String() string { return strconv.Itoa(*v.p) }
func (v atLeastOne) Type() string   { return "int" }
func (v atLeastOne) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return errors.New("want a whole number")
	}
	if n < 1 {
		return fmt.Errorf("must be at least 1, got %d", n)
	}
	*v.p = int(n)
	return nil
}

// sizeValue is a byte count given as a size (32MiB, 1GB or 1048576).
type sizeValue struct{ p *int64 }

// Type is "string", as the flag was before it was parsed here: --help
// stays as it was.
func (v sizeValue) Type() string { return "string" }
func (v sizeValue) String() string {
	n := *v.p
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (v sizeValue) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return errors.New("want a size per second like 32MiB")
	}
	*v.p = int64(n)
	return nil
}

// offDuration is a duration where 0 means off, kept as -1 (in Config, 0
// is "not set": the default).
type offDuration struct{ p *time.Duration }

func (v offDuration) Type() string { return "duration" }
func (v offDuration) String() string {
	if *v.p < 0 {
		return "0s"
	}
	return v.p.String()
}

func (v offDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration like 168h or 0 (off)")
	}
	if d == 0 {
		d = -1
	}
	*v.p = d
	return nil
}
