"""Levenberg–Marquardt with Nielsen's damping update and Marquardt's scaling.

References:
    K. Madsen, H. B. Nielsen, O. Tingleff, "Methods for Non-Linear Least Squares Problems",
    2nd ed., IMM, DTU, 2004, Algorithm 3.16 (Nielsen's damping rule).
    H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05.
    D. W. Marquardt, "An algorithm for least-squares estimation of nonlinear parameters",
    J. SIAM 11(2), 1963 (the classic ×10 / ÷10 rule and scaling by diag(JᵀJ)).
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "User guide for MINPACK-1", ANL-80-74, 1980
    (the running maximum of the column norms, and the ftol/xtol tests).

Minimise F(x) = ½‖r(x)‖². At the current point, with J the Jacobian of r, g = Jᵀr the gradient
and D² the scaling (the running maximum of diag(JᵀJ), or the identity when unscaled):

    solve      (JᵀJ + μD²) h = −g
    gain ratio ρ = (F(x) − F(x + h)) / (L(0) − L(h)),  L(0) − L(h) = ½ hᵀ(μD²h − g)
    if ρ > 0:  x ← x + h, re-evaluate J;  μ ← μ·max(1/3, 1 − (2ρ − 1)³), ν ← 2   (Nielsen)
                                          μ ← μ/10                              (classic)
    else:      μ ← μ·ν, ν ← 2ν                                                  (Nielsen)
               μ ← 10μ                                                          (classic)

With `damping_rule="trust_region"` (J. J. Moré, "The Levenberg–Marquardt algorithm:
implementation and theory", Numerical Analysis, LNM 630, 1978) μ is not updated directly: a
radius Δ bounds the scaled step, ‖Dh‖ ≤ Δ, and μ is the root of the secular equation
‖D h(μ)‖ = Δ (to 10%), found by Newton's method on 1/Δ − 1/‖D h(μ)‖ (μ ≈ 0 when the
Gauss–Newton step is inside the region), and the step is then scaled onto the boundary,
‖Dh‖ = Δ, where the solution of the trust-region problem lies (Nocedal & Wright, "Numerical
Optimization", 2nd ed., Theorem 4.1). Then Δ ← ½·min(Δ, ‖Dh‖) when ρ < 1/4 and
Δ ← max(Δ, 2‖Dh‖) when ρ > 3/4; Δ₀ = 100·‖Dx₀‖, as in MINPACK (`initial_radius`; scipy's
trust-region reflective method starts from ‖Dx₀‖).

The default rule is fast on the fits that most users have (a batch of Gaussian spots converges
in 4–11 steps), but Nielsen's damping from a far start can crawl along a curved valley for
thousands of steps (NIST MGH10) or run a parameter off to infinity (NIST BoxBOD, where the
model no longer depends on it). So a fit that has not converged after `fallback_after` steps
goes on with a robust rule: Moré's trust region with geodesic acceleration (α = 1.5), which
follows curved valleys and refuses the steps that run away. It goes on from where it is, with
a radius as long as its last step, unless its scaling has gone stale (a column of J has fallen
below 10⁻⁴ of its running maximum in diag(JᵀJ)), and then it starts again from x₀. A fit that
converges at a point where a column of J has vanished (below eps of its running maximum: a
stationary point at infinity) starts again from x₀ with the robust rule too, and comes back to
that point if the robust rule ends higher. Each stage is a loop of its own in the driver
(`AbstractSolver.stage_steps`), so a vmapped batch pays for the costlier robust step only while
one of its fits needs it.

Near a minimum the gain ratio stops meaning anything: F changes by less than its own rounding
(ε·Σ|rᵢ||yᵢ| for residuals rᵢ = fᵢ − yᵢ, which is far above ε·F when the residuals are small), so
the last steps, the ones that carry the final digits, come out rejected at random and the damping
grows until the step is below xtol. A step whose predicted and actual changes of F are both below
√ε·F is therefore judged by the gradient instead: it is taken when it makes ‖D⁻¹g‖ smaller. The
gradient is first order in the distance to the minimum where F is second order, so it resolves
the steps that F cannot (NIST StRD with `ftol=0, xtol=1e-15`: 10.85 digits on average, every run
above 10.3; 9.9 without this test, and 6.7 on the worst run).

A trial point whose residuals are not finite has ρ = NaN and is rejected like any other. With
bounds, parameters that the cost pushes against a bound are held there, and the trial point is
cut at the box (`Problem.step_into_box`); a cut step that the model does not expect to reduce
the cost counts as rejected (ρ = −1).

The method needs J only through JᵀJ and g = Jᵀr, so a chunked problem
(`least_squares(residual_chunk_size=...)`) runs it unchanged on normal equations accumulated chunk by
chunk, with neither r nor J in the state (both fields are None).
"""

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from .._linear import diagonal_of, solve_damped_normal_equations
from .._loop import AbstractSolver, Problem
from .._solution import Status, succeeded
from .._trace import StepInfo, StepKind
from ._tolerances import check_tolerances, initial_status, is_concrete, levenberg_marquardt_status


class LevenbergMarquardtState(eqx.Module):
    x: Float[Array, " n"]
    residual: Float[Array, " m"] | None  # None for a chunked problem
    cost: Float[Array, ""]
    jac: Float[Array, "m n"] | None  # None for a chunked problem
    jtj: Float[Array, "n n"]
    grad: Float[Array, " n"]
    scale: Float[Array, " n"]  # D², the diagonal that multiplies μ
    damping: Float[Array, ""]  # μ
    damping_growth: Float[Array, ""]  # ν
    radius: Float[Array, ""]  # Δ, used by the trust-region rule only (∞ under the others)
    step_norm: Float[Array, ""]
    accepted: Bool[Array, ""]
    status: Int[Array, ""]
    num_fev: Int[Array, ""]
    num_jev: Int[Array, ""]
    robust: Bool[Array, ""]  # the fit has switched to the fallback rule (see `fallback_after`)
    # The next fallback step goes to `start` instead (x₀, or the point to return to) and starts the
    # rule afresh there; `returning` when that is the return to `stopped`, with its status.
    jump: Bool[Array, ""]
    returning: Bool[Array, ""]
    start: Float[Array, " n"] | None  # None without a fallback, like `stopped`
    # Where the first stage stopped at infinity, its cost and status: the fallback from x₀ returns
    # there if it ends higher (∞ and RUNNING while there is no such point).
    stopped: Float[Array, " n"] | None
    stopped_cost: Float[Array, ""]
    stopped_status: Int[Array, ""]


def _as_scale(x_scale):
    """x_scale as a tuple of positive floats (hashable, like the rest of the configuration)."""
    if x_scale is None:
        return None
    values = tuple(float(v) for v in jnp.ravel(jnp.asarray(x_scale)).tolist())
    if not all(v > 0 and v < float("inf") for v in values):
        raise ValueError(f"x_scale must be positive and finite, got {x_scale!r}.")
    return values


class LevenbergMarquardt(AbstractSolver):
    """Levenberg–Marquardt, the default solver of `jaxlm.least_squares`.

    Args:
        ftol: stop when both the actual and the predicted relative reduction of the cost in a
            step are at most `ftol` (MINPACK's test).
        xtol: stop when the step satisfies ‖h‖ ≤ xtol·(‖x‖ + xtol); with `scaled=True` the
            norms are those of the scaled variables D·h and D·x, as in MINPACK.
        gtol: stop when ‖Jᵀr‖∞ ≤ gtol.
            `None` for any tolerance means a default chosen from the dtype of the parameters:
            1e-12, 1e-12, 0 in float64 and 1e-5, 1e-5, 0 in float32 (gtol = 0 as in MINPACK:
            ‖g‖∞ has the units of the problem, so only the user can choose it well).
        damping_rule: "nielsen" (smooth update from the gain ratio, the default), "classic"
            (Marquardt's ×10 on a rejected step, ÷10 on an accepted one), or "trust_region"
            (Moré's form: a radius Δ on ‖Dh‖ and μ solved for so that ‖Dh(μ)‖ ≈ Δ).
        scaled: damp with μ·D², D² the running maximum of diag(JᵀJ) (Marquardt's scaling, the
            default, which makes the method invariant to the units of each parameter), or
            with μ·I when False (μ·D², D = 1/x_scale, with `x_scale`).
        x_scale: with `scaled=False`, the characteristic size of each parameter (scipy's
            `x_scale`): D = 1/x_scale, a sequence of n positive numbers; None is all ones.
        initial_damping: τ in μ₀ = τ·max diag(JᵀJ) (unscaled), or μ₀ = τ (scaled, where the
            diagonal is already in D²). Nielsen suggests 1e-6 from a good start, 1e-3 or 1
            otherwise.
        initial_radius: for `damping_rule="trust_region"`, the factor in Δ₀ = factor·‖Dx₀‖
            (Δ₀ = factor when x₀ = 0): 100 as in MINPACK (scipy's `factor`), 1 as in scipy's
            "trf".
        geodesic_acceleration: `None` (the default) for plain LM steps, or α > 0 to add
            geodesic acceleration (Transtrum & Sethna, "Improvements to the Levenberg–Marquardt
            algorithm for nonlinear least-squares minimization", arXiv:1201.5885, 2012): the step
            becomes v + a/2 with a second-order correction a along the curved path of the
            model, computed from the second directional derivative r''(x)[v, v] by a nested
            `jvp`, and a step is accepted only when 2‖a‖/‖v‖ ≤ α (0.75 is their choice). It
            costs about two extra Jacobian-vector products per step (not counted in
            `num_fev`/`num_jev`) and follows narrow curved valleys in far fewer steps (NIST
            MGH10 from start 1: 1808 steps instead of 7686) and avoids some runaway parameters
            (NIST BoxBOD from start 1).
        fallback_after: the number of steps after which a fit that has not converged switches
            to the robust rule (Moré's trust region with geodesic acceleration); a fit that
            converges at a stationary point at infinity switches too, and starts again from x₀
            (see above). 30 by default; `None` keeps the chosen rule to the end.
        fallback_acceleration: α of the robust rule's geodesic acceleration (1.5); `None` for
            Moré's trust region alone.

    Example:
        >>> import jax.numpy as jnp, jaxlm
        >>> t = jnp.linspace(0.0, 3.0, 20)
        >>> y = 2.0 * jnp.exp(-1.3 * t)
        >>> def residual(p, t, y):
        ...     return p["a"] * jnp.exp(-p["k"] * t) - y
        >>> sol = jaxlm.least_squares(residual, {"a": 1.0, "k": 1.0}, (t, y),
        ...                           solver=jaxlm.LevenbergMarquardt())
        >>> bool(sol.success), round(float(sol.params["k"]), 4)
        (True, 1.3)
    """

    ftol: float | None = None
    xtol: float | None = None
    gtol: float | None = None
    damping_rule: Literal["nielsen", "classic", "trust_region"] = eqx.field(default="nielsen", static=True)
    scaled: bool = eqx.field(default=True, static=True)
    initial_damping: float = 1e-3
    geodesic_acceleration: float | None = eqx.field(default=None, static=True)
    initial_radius: float = 100.0
    x_scale: tuple[float, ...] | None = eqx.field(default=None, converter=_as_scale)
    fallback_after: int | None = eqx.field(default=30, static=True)
    fallback_acceleration: float | None = eqx.field(default=1.5, static=True)

    def __check_init__(self):
        if self.damping_rule not in ("nielsen", "classic", "trust_region"):
            raise ValueError(
                f"damping_rule must be 'nielsen', 'classic' or 'trust_region', got {self.damping_rule!r}."
            )
        check_tolerances(self)
        # (Traced values, when the solver is an argument of a jitted function, are not checked.)
        if is_concrete(self.initial_damping) and not self.initial_damping > 0:
            raise ValueError(f"initial_damping must be > 0, got {self.initial_damping}.")
        if is_concrete(self.initial_radius) and not self.initial_radius > 0:
            raise ValueError(f"initial_radius must be > 0, got {self.initial_radius}.")
        steps = self.fallback_after
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(
                f"fallback_after must be a positive number of steps, or None for no fallback, got "
                f"{self.fallback_after!r}."
            )
        if self.fallback_acceleration is not None and not self.fallback_acceleration > 0:
            raise ValueError(
                f"fallback_acceleration must be > 0, or None for no geodesic acceleration, got "
                f"{self.fallback_acceleration!r}."
            )
        if self.x_scale is not None and self.scaled:
            raise ValueError(
                "x_scale sets the scaling D = 1/x_scale, which replaces Marquardt's: pass scaled=False "
                "with it."
            )

    def init(self, problem: Problem, x0: Float[Array, " n"]) -> LevenbergMarquardtState:
        problem.require_residuals("LevenbergMarquardt")
        cost, residual = problem.evaluate(x0)
        jac, jtj, grad = problem.normal_equations(x0, residual)
        return LevenbergMarquardtState(
            x=x0,
            residual=residual,
            cost=cost,
            jac=jac,
            jtj=jtj,
            grad=grad,
            **self.starting_values(problem, x0, jtj, grad),
            num_fev=jnp.array(1, jnp.int32),
            num_jev=jnp.array(1, jnp.int32),
            robust=jnp.array(False),
            jump=jnp.array(False),
            returning=jnp.array(False),
            start=None if self.fallback_after is None else x0,
            stopped=None if self.fallback_after is None else x0,
            stopped_cost=jnp.asarray(jnp.inf, x0.dtype),
            stopped_status=jnp.array(Status.RUNNING, jnp.int32),
        )

    def starting_values(self, problem: Problem, x, jtj, grad) -> dict:
        """The fields that a start at x sets: the scaling, μ₀, Δ₀ and the status."""
        diagonal = diagonal_of(jtj)
        if self.scaled:
            scale = jnp.where(diagonal > 0, diagonal, 1)
            damping = jnp.asarray(self.initial_damping, x.dtype)
        else:
            scale = jnp.ones_like(x) if self.x_scale is None else 1 / jnp.asarray(self.x_scale, x.dtype) ** 2
            damping = self.initial_damping * jnp.maximum(jnp.max(diagonal), jnp.finfo(x.dtype).tiny)
        if self.damping_rule == "trust_region":
            radius = _initial_radius(x, scale, self.initial_radius)
        else:
            radius = jnp.asarray(jnp.inf, x.dtype)
        return dict(
            scale=scale,
            damping=damping,
            damping_growth=jnp.asarray(2, x.dtype),
            radius=radius,
            step_norm=jnp.asarray(jnp.inf, x.dtype),
            accepted=jnp.array(True),
            status=initial_status(problem.projected_gradient(x, grad), self.gtol, x.dtype),
        )

    def step_info(self, state: LevenbergMarquardtState) -> StepInfo:
        radius = state.radius if self.damping_rule == "trust_region" else jnp.nan
        if self.fallback_after is not None:
            radius = jnp.where(state.robust, state.radius, radius)
        return StepInfo(jnp.array(StepKind.LEVENBERG_MARQUARDT), state.accepted, state.damping, radius)

    def damping_after_rejection(self, mu, nu):
        """(μ, ν) after a rejected step: μν and 2ν (Nielsen), 10μ (classic); the trust-region
        rule shrinks Δ instead and keeps μ."""
        if self.damping_rule == "nielsen":
            return mu * nu, 2 * nu
        if self.damping_rule == "classic":
            return mu * 10, nu
        return mu, nu

    def fallback(self) -> "LevenbergMarquardt":
        """The solver of the fallback stage: Moré's trust region with geodesic acceleration."""
        return dataclasses.replace(
            self,
            damping_rule="trust_region",
            geodesic_acceleration=self.fallback_acceleration,
            fallback_after=None,
        )

    def stage_steps(self):
        if self.fallback_after is None:
            return (self.step,)
        return (self.first_stage_step, self.fallback_step)

    def stage(self, state: LevenbergMarquardtState) -> Int[Array, ""]:
        return state.robust.astype(jnp.int32)

    def step(self, problem: Problem, state: LevenbergMarquardtState) -> LevenbergMarquardtState:
        if self.fallback_after is None:
            return self.rule_step(problem, state)
        return lax.cond(
            state.robust,
            lambda state: self.fallback_step(problem, state),
            lambda state: self.first_stage_step(problem, state),
            state,
        )

    def first_stage_step(self, problem: Problem, state: LevenbergMarquardtState) -> LevenbergMarquardtState:
        """A step of the chosen rule, then the switch to the fallback: after `fallback_after` steps
        without converging (from x₀ again when the scaling has gone stale), or on converging at a
        stationary point at infinity (from x₀ again, keeping that point to return to)."""
        state = self.rule_step(problem, state)
        dtype = state.x.dtype
        running = state.status == Status.RUNNING
        # Against D², the running maximum of diag(JᵀJ); with a fixed scaling (scaled=False) the
        # ratios mean nothing, and only the step count switches.
        column_ratio = diagonal_of(state.jtj) / state.scale
        free = problem.free_variables(state.x, state.grad)
        at_infinity = jnp.array(False)
        stale = jnp.array(False)
        if self.scaled:
            at_infinity = succeeded(state.status) & jnp.any(free & (column_ratio <= jnp.finfo(dtype).eps))
            stale = jnp.any(free & (column_ratio < STALE_SCALING))
        switch = (running & (state.num_fev - 1 >= self.fallback_after)) | at_infinity
        # The fallback goes on with a radius as long as the last step (MINPACK's Δ₀ if it had none).
        last_step = jnp.where(
            jnp.isfinite(state.step_norm) & (state.step_norm > 0),
            state.step_norm,
            _initial_radius(state.x, state.scale, self.initial_radius),
        )
        return dataclasses.replace(
            state,
            robust=switch,
            jump=at_infinity | (switch & stale),
            radius=jnp.where(switch, last_step, state.radius).astype(dtype),
            status=jnp.where(at_infinity, Status.RUNNING, state.status).astype(jnp.int32),
            stopped=jnp.where(at_infinity, state.x, state.stopped),
            stopped_cost=jnp.where(at_infinity, state.cost, state.stopped_cost),
            stopped_status=jnp.where(at_infinity, state.status, state.stopped_status),
        )

    def fallback_step(self, problem: Problem, state: LevenbergMarquardtState) -> LevenbergMarquardtState:
        """A step of the fallback rule, or the jump to `start` that the switch or the return asked
        for; a fallback that ends higher than the point at infinity asks to return there."""
        fallback = self.fallback()
        if fallback.geodesic_acceleration is not None and not problem.twice_differentiable(state.x):
            fallback = dataclasses.replace(fallback, geodesic_acceleration=None)
        jumped, returning = state.jump, state.returning
        state = fallback.rule_step(problem, state, jump=jumped)
        values = fallback.starting_values(problem, state.x, state.jtj, state.grad)
        values["status"] = jnp.where(returning, state.stopped_status, values["status"]).astype(jnp.int32)
        started = dataclasses.replace(state, **values)
        state = jax.tree.map(lambda new, old: jnp.where(jumped, new, old), started, state)
        ended_higher = (state.status != Status.RUNNING) & (state.cost > state.stopped_cost) & ~returning
        return dataclasses.replace(
            state,
            robust=jnp.array(True),
            jump=ended_higher,
            returning=returning | ended_higher,
            start=jnp.where(ended_higher, state.stopped, state.start),
            status=jnp.where(ended_higher, Status.RUNNING, state.status).astype(jnp.int32),
        )

    def rule_step(
        self, problem: Problem, state: LevenbergMarquardtState, jump: Bool[Array, ""] | None = None
    ) -> LevenbergMarquardtState:
        """A step of the chosen damping rule; where `jump`, the trial point is `state.start` instead,
        and it is accepted (the fallback's restart, which `fallback_step` completes)."""
        dtype = state.x.dtype
        unconstrained_state = state
        if problem.bounded:
            # Parameters pinned at a bound drop out of the model (their rows and columns of JᵀJ
            # and their gradient become 0, so their step is 0); the trial point is cut at the box
            # (`Problem.step_into_box`).
            free = problem.free_variables(state.x, state.grad)
            state = dataclasses.replace(
                state,
                jtj=jnp.where(free[:, None] & free[None, :], state.jtj, 0),
                grad=jnp.where(free, state.grad, 0),
                jac=None if state.jac is None else jnp.where(free[None, :], state.jac, 0),
            )
        mu, nu = state.damping, state.damping_growth
        if self.damping_rule == "trust_region":
            mu, inside = _trust_region_damping(state, mu)

        damping_diagonal = mu * state.scale
        velocity = solve_damped_normal_equations(
            state.jtj, state.grad, mu, state.scale, state.jac, state.residual
        )
        # The reduction predicted by the damped model for the LM step v, L(0) − L(v) = ½vᵀ(μD²v − g) > 0
        # (with geodesic acceleration too, as Transtrum & Sethna do), so ρ > 0 means the cost went down.
        predicted_reduction = 0.5 * jnp.dot(velocity, damping_diagonal * velocity - state.grad)
        if self.damping_rule == "trust_region":  # onto the boundary ‖Dh‖ = Δ, unless v is inside
            scaled_velocity = jnp.linalg.norm(jnp.sqrt(state.scale) * velocity)
            factor = jnp.where(inside, 1, state.radius / jnp.where(scaled_velocity > 0, scaled_velocity, 1))
            # With g = −(JᵀJ + μD²)v: L(0) − L(sv) = s(1 − s/2)(−gᵀv) + ½s²μ‖Dv‖², a sum of positive
            # terms, which s = 1 turns into the formula above.
            predicted_reduction = factor * (1 - factor / 2) * -jnp.dot(state.grad, velocity) + (
                0.5 * factor**2 * jnp.dot(velocity, damping_diagonal * velocity)
            )
            # Δ·(v/‖Dv‖) rather than factor·v: rounded this way, a step onto a minimum at 0 lands
            # on 0 exactly (scipy's test_x_scale_options asserts x = 0 for the minimum of (x − 0)² + 5).
            velocity = jnp.where(
                inside,
                velocity,
                state.radius * (velocity / jnp.where(scaled_velocity > 0, scaled_velocity, 1)),
            )
        if self.geodesic_acceleration is None:
            step, acceleration_ok = velocity, True
        else:
            # Transtrum & Sethna (2012): the second directional derivative r''(x)[v, v] by a nested jvp
            # gives the acceleration a along the geodesic; the step is v + a/2, and it is trusted only
            # while the curvature is small, 2‖a‖/‖v‖ ≤ α (norms weighted by D).
            curvature, second_derivative = problem.curvature_gradient(state.x, velocity, state.jac)
            if problem.bounded:
                curvature = jnp.where(free, curvature, 0)
            acceleration = solve_damped_normal_equations(
                state.jtj, curvature, mu, state.scale, state.jac, second_derivative
            )
            step = velocity + 0.5 * acceleration
            weight = jnp.sqrt(state.scale)
            acceleration_ok = 2 * jnp.linalg.norm(weight * acceleration) <= (
                self.geodesic_acceleration * jnp.linalg.norm(weight * velocity)
            )
        x_trial = problem.step_into_box(state.x, step)
        if jump is not None:
            x_trial = jnp.where(jump, state.start, x_trial)
        cost_trial, residual_trial = problem.evaluate(x_trial)

        actual_reduction = state.cost - cost_trial
        stopped_short = False
        if problem.bounded:  # for a step s cut by the box: L(0) − L(s) = −gᵀs − ½sᵀJᵀJs
            projected = jnp.any(x_trial != state.x + step)
            stopped_short = jnp.any(x_trial != problem.project(state.x + step))
            step = x_trial - state.x
            predicted_reduction = jnp.where(
                projected,
                -jnp.dot(state.grad, step) - 0.5 * jnp.dot(step, state.jtj @ step),
                predicted_reduction,
            )
        state = unconstrained_state
        # A step cut by the box can leave the model expecting no reduction at all (the cut changes
        # its direction); it fails like a step that went uphill: ρ = −1, so the damping grows (or
        # the radius shrinks) towards the gradient direction, which the box cannot spoil.
        expected = predicted_reduction > 0
        gain_ratio = jnp.where(expected, actual_reduction / jnp.where(expected, predicted_reduction, 1), -1)
        accepted = (gain_ratio > (1e-4 if self.damping_rule == "trust_region" else 0)) & acceleration_ok
        if jump is not None:
            accepted = accepted | jump
        # Near a minimum the cost stops telling a better point from a worse one: its rounding,
        # ε·Σ|rᵢ|·|yᵢ| for residuals rᵢ = fᵢ − yᵢ, is ε·‖y‖/‖r‖ relative to F, far above ε when the
        # residuals are small. A step whose predicted and actual changes are both below √ε·F (the
        # rounding of fits whose residuals are down to √ε of the data) is judged by the gradient
        # instead, which is first order in the distance to the minimum where the cost is second
        # order: it is taken when it makes ‖D⁻¹g‖ smaller.
        resolution = jnp.sqrt(jnp.finfo(dtype).eps) * state.cost
        indistinct = (
            ~accepted
            & acceleration_ok
            & expected
            & (predicted_reduction <= resolution)
            & (jnp.abs(actual_reduction) <= resolution)
        )

        # A rejected step keeps the current point and its Jacobian; only an accepted one, or one to be
        # judged by the gradient, pays for a new one. (One `cond` for the whole choice: a `where` per
        # field would compile to a kernel each.)
        evaluated = accepted | indistinct
        if problem.chunks is None:
            x, cost, residual, jac = lax.cond(
                evaluated,
                lambda: (x_trial, cost_trial, residual_trial, problem.jacobian(x_trial)),
                lambda: (state.x, state.cost, state.residual, state.jac),
            )
            # Recomputed even after a rejection: selecting JᵀJ inside the `cond` makes XLA lay out the
            # vmapped products badly (float64 batches ran 2× slower).
            jtj, grad = problem.jtj_and_gradient(jac, residual)
        else:  # JᵀJ and Jᵀr accumulated chunk by chunk, without J
            x, cost, jtj, grad = lax.cond(
                evaluated,
                lambda: (x_trial, cost_trial, *problem.chunks.normal_equations(x_trial)),
                lambda: (state.x, state.cost, state.jtj, state.grad),
            )
            residual = jac = None
        # The judgement by the gradient needs J at the trial point, so a step that it refuses goes
        # back after the `cond`.
        projected_grad = problem.projected_gradient(x, grad)
        current_projected_grad = problem.projected_gradient(state.x, state.grad)

        def gradient_size(grad):  # ‖D⁻¹g‖ in this step's scaling
            return jnp.linalg.norm(grad / jnp.sqrt(state.scale))

        flatter = gradient_size(projected_grad) < gradient_size(current_projected_grad)
        x, cost, residual, jac, jtj, grad, projected_grad = jax.tree.map(
            lambda new, old: jnp.where(indistinct & ~flatter, old, new),
            (x, cost, residual, jac, jtj, grad, projected_grad),
            (state.x, state.cost, state.residual, state.jac, state.jtj, state.grad, current_projected_grad),
        )
        # A step taken on the gradient counts as one that the model predicted well.
        gain_ratio = jnp.where(indistinct & flatter, 1, gain_ratio)
        accepted = accepted | (indistinct & flatter)

        radius = state.radius
        mu_rejected, nu_rejected = self.damping_after_rejection(mu, nu)
        if self.damping_rule == "nielsen":
            mu_accepted = mu * jnp.maximum(1 / 3, 1 - (2 * gain_ratio - 1) ** 3)
        elif self.damping_rule == "classic":
            mu_accepted = mu / 10
        else:  # the radius moves; μ is solved for at the next step, from this one as a start
            scaled_step = jnp.linalg.norm(jnp.sqrt(state.scale) * step)
            radius = jnp.where(
                # also when the trial point was not finite (ρ = NaN), and when the step was refused
                # for its curvature (the radius then shrinks until the acceleration is small)
                ~(gain_ratio >= 0.25) | jnp.logical_not(acceleration_ok),
                0.5 * jnp.minimum(radius, scaled_step),
                jnp.where(gain_ratio > 0.75, jnp.maximum(radius, 2 * scaled_step), radius),
            )
            mu_accepted = mu
        mu = jnp.where(accepted, mu_accepted, mu_rejected)
        nu = jnp.where(accepted, 2, nu_rejected).astype(dtype)

        scale = jnp.maximum(state.scale, diagonal_of(jtj)) if self.scaled else state.scale

        # The norms are taken in the scaled variables D·x, as MINPACK does, so that a parameter of
        # large magnitude cannot hide the steps of the others.
        weight = jnp.sqrt(scale)
        step_norm = jnp.linalg.norm(weight * step)
        diverged = ~jnp.isfinite(mu)
        if self.damping_rule == "trust_region":
            diverged = diverged | ~jnp.isfinite(radius)
        status = levenberg_marquardt_status(
            self,
            grad=projected_grad,
            step_norm=step_norm,
            x_norm=jnp.linalg.norm(weight * x),
            cost=state.cost,
            actual_reduction=actual_reduction,
            predicted_reduction=predicted_reduction,
            gain_ratio=gain_ratio,
            diverged=diverged,
            # A step refused for its curvature says nothing about convergence, only one refused for its cost,
            # and one whose model expected no reduction (cut by the box) says nothing about the cost.
            # A step that stopped short of a bound is short because of the box, not of convergence.
            xtol_applies=acceleration_ok & ~stopped_short,
            ftol_applies=predicted_reduction > 0,
        )

        return LevenbergMarquardtState(
            x=x,
            residual=residual,
            cost=cost,
            jac=jac,
            jtj=jtj,
            grad=grad,
            scale=scale,
            damping=mu.astype(dtype),
            damping_growth=nu,
            radius=radius.astype(dtype),
            step_norm=step_norm,
            accepted=accepted,
            status=status,
            num_fev=state.num_fev + 1,
            num_jev=state.num_jev + evaluated.astype(jnp.int32),
            robust=state.robust,
            jump=state.jump,
            returning=state.returning,
            start=state.start,
            stopped=state.stopped,
            stopped_cost=state.stopped_cost,
            stopped_status=state.stopped_status,
        )


def _initial_radius(x0, scale, factor):
    """Δ₀ = factor·‖D x₀‖, or factor when x₀ = 0 (MINPACK's factor, 100)."""
    norm = jnp.linalg.norm(jnp.sqrt(scale) * x0)
    return jnp.where(norm > 0, factor * norm, factor).astype(x0.dtype)


# A column of J whose diag(JᵀJ) has fallen below this fraction of its running maximum (a factor
# 100 in its norm) tells that the scaling D² no longer fits the point the first stage has reached.
STALE_SCALING = 1e-4
SECULAR_ITERATIONS = 10
SECULAR_TOLERANCE = 0.1


def _trust_region_damping(state, mu_start):
    """(μ ≥ 0 with ‖D h(μ)‖ ≈ Δ, h(μ) = −(JᵀJ + μD²)⁻¹g, and whether the Gauss–Newton step is inside
    the region, so that μ ≈ 0) (Moré 1978; Nocedal & Wright, Algorithm 4.3).

    In the scaled variables z = Dh the curve is z(μ) = −(A + μI)⁻¹b with A = D⁻¹JᵀJD⁻¹ and
    b = D⁻¹g, so one eigendecomposition A = QΛQᵀ gives its length for every μ,
    ‖z(μ)‖² = Σ cᵢ²/(λᵢ + μ)² with c = Qᵀb, and no solve is needed while μ is sought. Newton's
    method on φ(μ) = 1/Δ − 1/‖z(μ)‖, which is nearly linear in μ,
    μ ← μ + (‖z‖/Δ − 1)·‖z‖²/Σ cᵢ²/(λᵢ + μ)³, safeguarded as Moré does: μ stays in a bracket
    [l, u] that starts at [ε·u, ‖D⁻¹g‖/Δ] and shrinks with every evaluation, and a Newton step that
    leaves it is replaced by max(10⁻³u, √(lu)).
    """
    weight = jnp.sqrt(state.scale)
    scaled_gradient = state.grad / weight
    eigenvalues, eigenvectors = jnp.linalg.eigh(state.jtj / (weight[:, None] * weight[None, :]))
    eigenvalues = jnp.maximum(eigenvalues, 0)  # JᵀJ is positive semidefinite; rounding is not
    coefficients = eigenvectors.T @ scaled_gradient

    def scaled_norm(mu):
        return jnp.linalg.norm(coefficients / (eigenvalues + mu))

    upper = jnp.linalg.norm(scaled_gradient) / state.radius
    # The Gauss–Newton end of the curve, approached from μ > 0 like every other point of it.
    gauss_newton_mu = jnp.finfo(state.x.dtype).eps * upper
    gauss_newton_fits = scaled_norm(gauss_newton_mu) <= (1 + SECULAR_TOLERANCE) * state.radius

    def newton(_, carry):
        mu, lower, upper = carry
        norm = scaled_norm(mu)
        close = jnp.abs(norm - state.radius) <= SECULAR_TOLERANCE * state.radius
        lower = jnp.where(norm > state.radius, jnp.maximum(lower, mu), lower)
        upper = jnp.where(norm < state.radius, jnp.minimum(upper, mu), upper)
        curvature = jnp.sum(coefficients**2 / (eigenvalues + mu) ** 3)
        updated = mu + (norm / state.radius - 1) * norm**2 / curvature
        inside = jnp.isfinite(updated) & (updated > lower) & (updated < upper)
        updated = jnp.where(inside, updated, jnp.maximum(1e-3 * upper, jnp.sqrt(lower * upper)))
        return jnp.where(close, mu, updated), lower, upper

    start = jnp.where((mu_start > gauss_newton_mu) & (mu_start < upper), mu_start, 1e-3 * upper)
    mu, _, _ = lax.fori_loop(0, SECULAR_ITERATIONS, newton, (start, gauss_newton_mu, upper))
    # Inside the region the step is the Gauss–Newton step itself (μ = 0, as in MINPACK; the solve's
    # fallback takes care of a singular JᵀJ).
    return jnp.where(gauss_newton_fits, 0, mu).astype(state.x.dtype), gauss_newton_fits
