from ._damped_newton import DampedNewton as DampedNewton, DampedNewtonState as DampedNewtonState
from ._gauss_newton import GaussNewton as GaussNewton, GaussNewtonState as GaussNewtonState
from ._hybrid import HybridLMQN as HybridLMQN, HybridState as HybridState
from ._lbfgs_lm import LBFGSLM as LBFGSLM, LBFGSLMState as LBFGSLMState
from ._levenberg_marquardt import (
    LevenbergMarquardt as LevenbergMarquardt,
    LevenbergMarquardtState as LevenbergMarquardtState,
)
from ._matrix_free_lm import MatrixFreeLM as MatrixFreeLM, MatrixFreeLMState as MatrixFreeLMState
from ._newton_raphson import NewtonRaphson as NewtonRaphson, NewtonState as NewtonState
