// kubectl, exactly as upstream's cmd/kubectl builds it.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		// Pretty-print the error and exit non-zero, as upstream kubectl does.
		util.CheckErr(err)
	}
}
