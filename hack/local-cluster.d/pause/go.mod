// A module of its own so that the repository's `go build ./...`, `go vet ./...`
// and `go mod tidy` never see this program.
module mfcp-local-cluster/pause

go 1.22
