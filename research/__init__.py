"""Research code, not installed with microtrain: reference models pretrained from packaged
datasets (zoo) and the accuracy experiments behind the tests' bars and `make bench`."""
