"""The last third of test_distribution.py's single-row cases (test_distribution_more.py has another): the
distribution tests are the suite's longest, and `make test` gives each file to one worker
(pytest-xdist, loadfile), so they are split in three files that the two workers share out."""

import pytest

from tests.integration.test_distribution import SINGLE, check_sampling, pair  # noqa: F401 - pair is a fixture


@pytest.mark.parametrize("recipe, case", SINGLE[2::3])
def test_sampling_is_lossless(pair, recipe, case, tmp_path):  # noqa: F811
    check_sampling(pair, recipe, case, tmp_path)
