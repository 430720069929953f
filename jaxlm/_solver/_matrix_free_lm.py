"""Matrix-free Levenberg–Marquardt: the damped normal equations solved by conjugate gradients on
Jacobian–vector products, for problems with thousands to hundreds of thousands of parameters.

References:
    K. Madsen, H. B. Nielsen, O. Tingleff, "Methods for Non-Linear Least Squares Problems",
    2nd ed., IMM, DTU, 2004, Algorithm 3.16 (LM with Nielsen's damping rule).
    R. S. Dembo, S. C. Eisenstat, T. Steihaug, "Inexact Newton methods", SIAM J. Numer. Anal.
    19(2), 1982 (the forcing sequence), and T. Steihaug, "The conjugate gradient method and
    trust regions in large scale optimization", SIAM J. Numer. Anal. 20(3), 1983.
    J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006, Algorithm 5.3
    (preconditioned CG) and Chapter 7.1 (inexact Newton steps, Theorem 7.2).
    M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines", Commun. Stat. Simul. Comput. 19(2), 1990, and C. Bekas, E. Kokiopoulou,
    Y. Saad, "An estimator for the diagonal of a matrix", Appl. Numer. Math. 57, 2007 (random
    probes for a diagonal).

Minimise F(x) = ½‖r(x)‖², r: ℝⁿ → ℝᵐ. Levenberg–Marquardt steps by h = argmin L(h) + ½μ hᵀD²h,
where L(h) = F(x) + gᵀh + ½‖Jh‖² is the linear model of F, g = Jᵀr, J the Jacobian of r at x;
that is, it solves (JᵀJ + μD²) h = −g. For large n neither J (m × n) nor JᵀJ (n × n) can be
formed or factorised, but the products J·v (forward mode) and Jᵀ·u (reverse mode) cost about one
evaluation of r each. So, at the current point x:

    linearise  r at x: `jax.linearize` keeps the intermediate values of r that J·v needs, not J,
               and `jax.linear_transpose` of that linear map gives Jᵀ·u
    solve      (JᵀJ + μD²) h = −g inexactly, by conjugate gradients from h = 0, until
               ‖(JᵀJ + μD²)h + g‖ ≤ η‖g‖ or `max_cg_iterations`, with the forcing term
               η = min(cg_tolerance, √(‖g‖/‖g₀‖)), which shrinks with the gradient so that the
               fast local convergence of LM survives the inexact solves
    gain ratio ρ = (F(x) − F(x + h)) / (L(0) − L(h)),  L(0) − L(h) = −gᵀh − ½‖Jh‖²  (one more J·v;
               the form that holds for any h, not only the exact solution)
    if ρ > 0:  x ← x + h, whose linearisation was made when r(x + h) was evaluated;
               μ ← μ·max(1/3, 1 − (2ρ − 1)³), ν ← 2                          (Nielsen)
    else:      μ ← μ·ν, ν ← 2ν, and x and its linearisation are kept: nothing is recomputed

Every CG iterate from h = 0 lowers the damped model, so a step cut short by `max_cg_iterations`
still predicts a reduction, L(0) − L(h) > ½μ hᵀD²h > 0, and is accepted or rejected like any
other. Such a step says nothing about convergence, though: the ftol and xtol tests count only
steps whose CG met its tolerance.

Scaling and preconditioning. Marquardt's scaling D² and the Jacobi preconditioner of CG both want
diag(JᵀJ), the squared column norms of J, which take n products to compute exactly. With
`diagonal_probes` = k > 0 it is estimated at every accepted point from k products Jᵀz with random
±1 vectors z, since E[(Jᵀz)ⱼ²] = Σᵢ Jᵢⱼ²; D² is the running maximum of the estimates (as MINPACK
keeps the column norms), diag(JᵀJ) + μD² preconditions CG, and μ₀ = τ. With k = 0 (the default)
D = I, CG is not preconditioned, and μ₀ = τ·‖Jg‖²/‖g‖², the curvature of JᵀJ along g (dense LM
uses max diag(JᵀJ), which is not available here).

Derivatives through the solve (`ImplicitAdjoint()`, the default) do not form the Hessian either:
for this solver the implicit derivative solves H ẋ = −∂θ∇ₓF·θ̇ by CG on Hessian–vector products
(`ImplicitAdjoint(linear_solver="cg")`, see `_implicit.py`). CG runs in Equinox's checkpointed
while loop, which reverse mode can differentiate through, so `UnrolledAdjoint` works too.
Bounds are not supported (`least_squares` accepts them for `LevenbergMarquardt` only).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .._conjugate_gradients import conjugate_gradients
from .._loop import AbstractSolver, Problem
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, initial_status, levenberg_marquardt_status


class MatrixFreeLMState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"]
    cost: Float[Array, ""]
    grad: Float[Array, " n"]
    linearization: list[Array]  # the arrays `jax.linearize` keeps for J·v at x (not J)
    jtj_diagonal: Float[Array, " n"]  # the estimate of diag(JᵀJ) at x (zeros without probes)
    scale: Float[Array, " n"]  # D², the diagonal that multiplies μ
    damping: Float[Array, ""]  # μ
    damping_growth: Float[Array, ""]  # ν
    start_grad_norm: Float[Array, ""]  # ‖g₀‖, for the forcing term
    step_norm: Float[Array, ""]
    accepted: Bool[Array, ""]
    cg_iterations: Int[Array, ""]  # in the last step
    total_cg_iterations: Int[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]  # linearisations kept: the start and every accepted point


class MatrixFreeLM(AbstractSolver):
    """Levenberg–Marquardt for many parameters: J is never formed, the step comes from conjugate
    gradients on Jacobian–vector products.

    A step costs about two evaluations of the residuals per CG iteration, and memory for a few
    vectors and one linearisation, instead of m·n for J, n² for JᵀJ and n³ for its factorisation
    in `LevenbergMarquardt`. From about a thousand parameters it is orders of magnitude faster
    (see benchmarks/README.md); with a few parameters, or when J is so ill-conditioned that CG
    needs many iterations, the dense solver is as fast and takes fewer steps. `Solution.num_jev`
    counts the points where the residuals were linearised (the start and every accepted step).

    Args:
        ftol, xtol, gtol: the stopping tests, as for `LevenbergMarquardt` (None: from the dtype).
            The ftol and xtol tests count only steps whose CG solve met its tolerance.
        initial_damping: τ in μ₀ = τ·‖Jg‖²/‖g‖² (without probes) or μ₀ = τ (with them).
        cg_tolerance: the largest relative residual ‖(JᵀJ + μD²)h + g‖/‖g‖ at which CG stops; it
            shrinks further as √(‖g‖/‖g₀‖) near the solution. In (0, 1).
        max_cg_iterations: the most CG iterations per step (each costs one J·v and one Jᵀ·u).
        diagonal_probes: the number of random vectors with which diag(JᵀJ) is estimated at every
            accepted point, for Marquardt's scaling D² and a Jacobi preconditioner (each costs
            one Jᵀ·u). 0 (the default) means D = I and plain CG, which is right when the
            parameters share their units (pixels of an image, values on a grid).

    Example:
        >>> import jax.numpy as jnp, jaxlm
        >>> from jaxlm._solver import MatrixFreeLM
        >>> def residual(x, y):  # a smooth signal close to y: data and roughness
        ...     return jnp.concatenate([jnp.tanh(x) - y, 3.0 * jnp.diff(x)])
        >>> y = jnp.sin(jnp.linspace(0.0, 3.0, 1000))
        >>> sol = jaxlm.least_squares(residual, jnp.zeros(1000), (y,), solver=MatrixFreeLM())
        >>> bool(sol.success)
        True
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    initial_damping: float = 1e-3
    cg_tolerance: float = 0.1
    max_cg_iterations: int = eqx.field(default=100, static=True)
    diagonal_probes: int = eqx.field(default=0, static=True)

    def __check_init__(self):
        check_tolerances(self)
        if not self.initial_damping > 0:
            raise ValueError(f"initial_damping must be > 0, got {self.initial_damping}.")
        if not 0 < self.cg_tolerance < 1:
            raise ValueError(
                f"cg_tolerance must be in (0, 1): CG stops at ‖(JᵀJ + μD²)h + g‖ ≤ cg_tolerance·‖g‖; "
                f"got {self.cg_tolerance}."
            )
        for name, least in (("max_cg_iterations", 1), ("diagonal_probes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> MatrixFreeLMState:
        problem.require_residuals("MatrixFreeLM")
        if problem.residual is None:  # residuals in chunks, from least_squares(residual_chunk_size=...)
            raise ValueError(
                "MatrixFreeLM needs the residual function whole: drop residual_chunk_size (it never forms J, "
                "so its memory does not grow with m·n in the first place)."
            )
        if problem.bounded:
            raise ValueError(
                "MatrixFreeLM does not support bounds: use jaxlm.LevenbergMarquardt(), or "
                "reparametrise the bounded parameters (x = lower + (upper − lower)·sigmoid(z))."
            )
        residual, linearization = _linearize(problem, x0)
        jvp, vjp = _jacobian_products(problem, x0, linearization)
        grad = vjp(residual)
        if self.diagonal_probes > 0:
            jtj_diagonal = self._estimate_jtj_diagonal(vjp, residual, jnp.array(0))
            scale = jnp.where(jtj_diagonal > 0, jtj_diagonal, 1)
            damping = jnp.asarray(self.initial_damping, x0.dtype)
        else:
            jtj_diagonal = jnp.zeros_like(x0)
            scale = jnp.ones_like(x0)
            tiny = jnp.finfo(x0.dtype).tiny
            curvature = jnp.sum(jvp(grad) ** 2) / jnp.maximum(jnp.sum(grad**2), tiny)
            damping = self.initial_damping * jnp.where(curvature > 0, curvature, 1)
        return MatrixFreeLMState(
            x=x0,
            residual=residual,
            cost=0.5 * jnp.sum(residual**2),
            grad=grad,
            linearization=linearization,
            jtj_diagonal=jtj_diagonal,
            scale=scale,
            damping=damping.astype(x0.dtype),
            damping_growth=jnp.asarray(2, x0.dtype),
            start_grad_norm=jnp.linalg.norm(grad),
            step_norm=jnp.asarray(jnp.inf, x0.dtype),
            accepted=jnp.array(True),
            cg_iterations=jnp.array(0, jnp.int32),
            total_cg_iterations=jnp.array(0, jnp.int32),
            status=initial_status(grad, self.gtol, x0.dtype),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(1, jnp.int32),
        )

    def step_info(self, state: MatrixFreeLMState) -> StepInfo:
        return StepInfo(jnp.array(StepKind.LEVENBERG_MARQUARDT), state.accepted, state.damping, jnp.nan)

    def _estimate_jtj_diagonal(self, vjp, residual, seed) -> Float[Array, " n"]:
        """diag(JᵀJ) ≈ the mean of (Jᵀz)² over `diagonal_probes` random ±1 vectors z."""
        key = jax.random.fold_in(jax.random.key(0), seed)
        probes = jax.random.rademacher(key, (self.diagonal_probes, residual.size), residual.dtype)
        return jnp.mean(jax.vmap(vjp)(probes) ** 2, axis=0)

    def step(self, problem: Problem, state: MatrixFreeLMState) -> MatrixFreeLMState:
        dtype = state.x.dtype
        jvp, vjp = _jacobian_products(problem, state.x, state.linearization)
        mu, nu = state.damping, state.damping_growth
        damping_diagonal = mu * state.scale

        def damped_normal_matrix_times(v):
            return vjp(jvp(v)) + damping_diagonal * v

        if self.diagonal_probes > 0:
            preconditioner = state.jtj_diagonal + damping_diagonal
            apply_preconditioner = lambda v: v / preconditioner
        else:
            apply_preconditioner = lambda v: v
        grad_norm = jnp.linalg.norm(state.grad)
        forcing = jnp.minimum(self.cg_tolerance, jnp.sqrt(grad_norm / state.start_grad_norm))
        step, cg_iterations, cg_converged = conjugate_gradients(
            damped_normal_matrix_times, -state.grad, apply_preconditioner, forcing, self.max_cg_iterations
        )

        # r at the trial point and its linearisation there, which the next step uses if this one is accepted.
        x_trial = state.x + step
        residual_trial, linearization_trial = _linearize(problem, x_trial)
        cost_trial = 0.5 * jnp.sum(residual_trial**2)
        actual_reduction = state.cost - cost_trial
        predicted_reduction = -jnp.dot(state.grad, step) - 0.5 * jnp.sum(jvp(step) ** 2)
        gain_ratio = actual_reduction / predicted_reduction
        accepted = gain_ratio > 0  # False when the trial cost is NaN or inf

        mu = jnp.where(accepted, mu * jnp.maximum(1 / 3, 1 - (2 * gain_ratio - 1) ** 3), mu * nu)
        nu = jnp.where(accepted, 2, 2 * nu).astype(dtype)

        def at_trial_point():
            _, vjp_trial = _jacobian_products(problem, x_trial, linearization_trial)
            grad = vjp_trial(residual_trial)
            if self.diagonal_probes == 0:
                return grad, state.jtj_diagonal
            return grad, self._estimate_jtj_diagonal(vjp_trial, residual_trial, state.num_jev)

        grad, jtj_diagonal = lax.cond(accepted, at_trial_point, lambda: (state.grad, state.jtj_diagonal))
        x = jnp.where(accepted, x_trial, state.x)
        residual = jnp.where(accepted, residual_trial, state.residual)
        cost = jnp.where(accepted, cost_trial, state.cost)
        linearization = jax.tree.map(
            lambda new, old: jnp.where(accepted, new, old), linearization_trial, state.linearization
        )
        scale = jnp.maximum(state.scale, jtj_diagonal)

        # The norms of the scaled variables D·x, as in MINPACK (D = I without probes).
        weight = jnp.sqrt(scale)
        step_norm = jnp.linalg.norm(weight * step)
        status = levenberg_marquardt_status(
            self,
            grad=grad,
            step_norm=step_norm,
            x_norm=jnp.linalg.norm(weight * x),
            cost=state.cost,
            actual_reduction=actual_reduction,
            predicted_reduction=predicted_reduction,
            gain_ratio=gain_ratio,
            diverged=~jnp.isfinite(mu),
            xtol_applies=cg_converged,
            ftol_applies=cg_converged,
        )

        return MatrixFreeLMState(
            x=x,
            residual=residual,
            cost=cost,
            grad=grad,
            linearization=linearization,
            jtj_diagonal=jtj_diagonal,
            scale=scale,
            damping=mu.astype(dtype),
            damping_growth=nu,
            start_grad_norm=state.start_grad_norm,
            step_norm=step_norm,
            accepted=accepted,
            cg_iterations=cg_iterations,
            total_cg_iterations=state.total_cg_iterations + cg_iterations,
            status=status,
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + accepted.astype(jnp.int32),
        )


def _linearize(problem: Problem, x: Float[Array, " n"]) -> tuple[Float[Array, " m"], list[Array]]:
    """r(x), and the arrays that J·v at x needs (intermediate values of r, not J)."""
    residual, jvp = jax.linearize(problem.residual, x)
    return residual, jax.tree.leaves(jvp)


def _jacobian_products(problem: Problem, x: Float[Array, " n"], linearization: list[Array]):
    """(v ↦ J·v, u ↦ Jᵀ·u) at x, from the arrays that `_linearize` kept there.

    The linear map of `jax.linearize` is a pytree: its arrays are the leaves and the traced
    program is the structure. The arrays live in the solver state; the structure, which is the
    same at every point x of this shape, is traced again here without evaluating anything.
    """
    abstract = jax.eval_shape(lambda x: jax.linearize(problem.residual, x)[1], x)
    expected = [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(abstract)]
    if expected != [(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in linearization]:
        raise ValueError(
            "MatrixFreeLM: the residual function traced differently at two points of the same shape; "
            "it must run the same operations for every value of the parameters."
        )
    jvp = jax.tree.unflatten(jax.tree.structure(abstract), linearization)
    transpose = jax.linear_transpose(jvp, x)
    return jvp, lambda u: transpose(u)[0]
