"""The optimisers: the solvers every calibrator's fit uses."""
