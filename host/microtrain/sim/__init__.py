"""The numpy reference of every kernel (the C kernels' test oracle) and the simulator that runs
a plan step for step like the board."""
