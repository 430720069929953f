"""jaxlm: jitted, vmappable, differentiable Levenberg–Marquardt and Newton-type solvers in JAX."""

from . import models as models
from ._batch import least_squares_batch as least_squares_batch
from ._curve_fit import curve_fit as curve_fit
from ._distributed import process_block as process_block
from ._fit_result import FitResult as FitResult, fit as fit
from ._implicit import (
    AbstractAdjoint as AbstractAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    UnrolledAdjoint as UnrolledAdjoint,
)
from ._least_squares import least_squares as least_squares
from ._loop import AbstractSolver as AbstractSolver
from ._minimize import minimize as minimize
from ._multistart import multistart as multistart
from ._poisson import poisson_residual as poisson_residual
from ._solution import Solution as Solution, Status as Status
from ._solver import (
    LBFGSLM as LBFGSLM,
    DampedNewton as DampedNewton,
    GaussNewton as GaussNewton,
    HybridLMQN as HybridLMQN,
    LevenbergMarquardt as LevenbergMarquardt,
    MatrixFreeLM as MatrixFreeLM,
    NewtonRaphson as NewtonRaphson,
)
from ._stepwise import AskTell as AskTell, Request as Request, Stepper as Stepper
from ._trace import StepKind as StepKind, Trace as Trace

__version__ = "0.1.0"


def __getattr__(name):
    # `jaxlm.plot` imports matplotlib and `jaxlm.scipy` scipy.optimize, and `OptimizeWarning`
    # subclasses scipy's: all are loaded on first use only (importing scipy.optimize takes 0.3 s).
    import importlib

    if name in ("plot", "scipy"):
        return importlib.import_module(f".{name}", __name__)
    if name == "OptimizeWarning":
        return importlib.import_module("._failure", __name__).optimize_warning()
    raise AttributeError(f"module 'jaxlm' has no attribute {name!r}")
