module github.com/cring-dev/cring

go 1.26.8

require (
	github.com/charmbracelet/charm v0.12.6
	github.com/golang-jwt/jwt/v4 v4.5.0
	github.com/spf13/cobra v1.6.1
	github.com/spf13/pflag v1.0.5
	gopkg.in/square/go-jose.v2 v2.6.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/google/go-cmp v0.5.9 // indirect
	github.com/inconshreveable/mousetrap v1.0.1 // indirect
	github.com/kr/pretty v0.3.1 // indirect
	github.com/stretchr/testify v1.8.3 // indirect
	golang.org/x/crypto v0.10.0 // indirect
	gopkg.in/check.v1 v1.0.0-20201130134442-10cb98267c6c // indirect
)
