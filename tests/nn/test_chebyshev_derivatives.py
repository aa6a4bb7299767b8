"""NEP's Chebyshev basis with closed-form derivatives (mlip_plugins.nn.radial) against autograd
through the plain recurrence: values, first and second derivatives in r, and the parameter
gradient of a force-like loss (what a NEP training step differentiates), float64."""

import pytest
import torch

from mlip_plugins.nn.radial import _basis_terms, chebyshev_basis


@pytest.mark.parametrize("per_edge", [False, True])
def test_closed_form_derivatives_match_autograd(per_edge):
    torch.manual_seed(0)
    r = (torch.rand(60, dtype=torch.float64) * 9.0 + 0.2).requires_grad_(True)
    cutoff = torch.where(torch.arange(60) < 20, 4.0, 8.0).to(torch.float64) if per_edge else 8.0
    weights = torch.randn(60, 7, dtype=torch.float64, requires_grad=True)

    def force_loss(basis):
        (slope,) = torch.autograd.grad((basis * weights).sum(), r, create_graph=True)
        return (slope**2).sum()

    fast, plain = chebyshev_basis(r, cutoff, 6), _basis_terms(r, cutoff, 6, order=0)[0]
    assert torch.equal(fast, plain)
    # the custom function is in use (its backward is not autograd's record of the recurrence)
    assert type(fast.grad_fn).__name__.startswith("_ChebyshevBasis")
    loss_fast, loss_plain = force_loss(fast), force_loss(plain)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-13, atol=1e-13)
    # second derivatives: in r (Hessian-like) and in the weights (the training gradient)
    g_fast = torch.autograd.grad(loss_fast, (r, weights))
    g_plain = torch.autograd.grad(loss_plain, (r, weights))
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # beyond the cutoff: zero values and zero slopes
    outside = r.detach() >= (cutoff if isinstance(cutoff, float) else cutoff)
    assert outside.any()
    (slope,) = torch.autograd.grad(fast.sum(), r)
    assert torch.all(fast.detach()[outside] == 0) and torch.all(slope[outside] == 0)
