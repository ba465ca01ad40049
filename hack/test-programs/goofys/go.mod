module mfcp-test-programs/goofys

go 1.21

require (
	github.com/Azure/azure-sdk-for-go v32.1.0+incompatible
	github.com/Azure/azure-storage-blob-go v0.7.1-0.20190724222048-33c102d4ffd2
	github.com/Azure/go-autorest/autorest/azure/auth v0.5.11
	github.com/Azure/go-autorest/autorest/to v0.4.0
	github.com/Azure/go-autorest/autorest/validation v0.3.1
	github.com/aws/aws-sdk-go v1.42.44
	github.com/google/uuid v1.6.0
	github.com/jacobsa/fuse v0.0.0-00010101000000-000000000000
	github.com/kahing/goofys v0.24.0
	github.com/kardianos/osext v0.0.0-20190222173326-2bc1f35cddc0
	github.com/mitchellh/go-homedir v1.1.0
	github.com/satori/go.uuid v1.2.1-0.20181028125025-b2ce2384e17b
	github.com/sevlyar/go-daemon v0.1.5
	github.com/shirou/gopsutil v2.21.11+incompatible
	github.com/sirupsen/logrus v1.8.1
	github.com/tklauser/go-sysconf v0.3.9
	github.com/urfave/cli v1.22.5
	github.com/yusufpapurcu/wmi v1.2.2
	gopkg.in/ini.v1 v1.67.3
)

replace github.com/jacobsa/fuse => github.com/kahing/fusego v0.0.0-20200327063725-ca77844c7bcc
