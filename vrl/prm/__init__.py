"""Process reward models: step splitting and selection rules (:mod:`vrl.prm.steps`), "+"/"-" readouts
(:mod:`vrl.prm.readout`, VL-PRM), the generative GM-PRM (:mod:`vrl.prm.generative`), best-of-N, greedy step search
and Refined-BoN (:mod:`vrl.prm.search`), and a PRM as a reward term (:mod:`vrl.prm.reward`)."""
