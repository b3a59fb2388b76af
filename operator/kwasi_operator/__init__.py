"""kwasi-operator: reconciles WasmInference custom resources (kwasi.dev/v1alpha1)."""
