"""Reference physics simulators that produce detector responses with known truth.

``detgen.simulators.dedx``: the BESIII drift chamber (MDC) dE/dx simulator.
"""
