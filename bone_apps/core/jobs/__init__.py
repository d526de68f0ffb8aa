"""Running core work: generators driven to the end, devices, distributed runs and the resource monitor."""
