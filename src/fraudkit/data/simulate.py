"""The synthetic world of card payments and its fraud scenarios: a batch dataset or an endless stream.

Every simulated day is a pure function of (seed, world size, calendar day), so a batch of N days
and the first N days of the stream are the same transactions, and the same seed gives the same
bytes. Customers live in cities around the world, buy mostly at a few terminals near home in
their local daytime, sometimes travel; fraud hides in behaviour (amount against the card's habit,
bursts, far-away places, terminals that go bad for weeks), never in a column of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from fraudkit.config import SimulateConfig
from fraudkit.errors import ConfigError, DataError
from fraudkit.features.spec import haversine_km_array
from fraudkit.schema import CANONICAL_COLUMNS, FILE_COLUMNS, TEXT_COLUMNS
from fraudkit.timefmt import iso_ms

if TYPE_CHECKING:
    import pandas
    import pyarrow

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

SCENARIOS = (
    "large_amount",
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "impossible_travel",
)
LARGE_AMOUNT, COMPROMISED_TERMINAL, COMPROMISED_CARD, CARD_TESTING, IMPOSSIBLE_TRAVEL = range(1, 6)


class City(NamedTuple):
    name: str
    country: str
    currency: str
    lat: float
    lon: float
    weight: float


# One big city per country first, so that even a small world spans several countries.
CITIES = (
    City("New York", "US", "USD", 40.71, -74.01, 8.0),
    City("London", "GB", "GBP", 51.51, -0.13, 6.0),
    City("Paris", "FR", "EUR", 48.86, 2.35, 5.0),
    City("Berlin", "DE", "EUR", 52.52, 13.40, 5.0),
    City("Tokyo", "JP", "JPY", 35.68, 139.69, 6.0),
    City("Sao Paulo", "BR", "BRL", -23.55, -46.63, 4.0),
    City("Sydney", "AU", "AUD", -33.87, 151.21, 3.0),
    City("Toronto", "CA", "CAD", 43.65, -79.38, 3.0),
    City("Mumbai", "IN", "INR", 19.08, 72.88, 4.0),
    City("Madrid", "ES", "EUR", 40.42, -3.70, 3.0),
    City("Mexico City", "MX", "MXN", 19.43, -99.13, 3.0),
    City("Lagos", "NG", "NGN", 6.52, 3.38, 2.0),
    City("Singapore", "SG", "SGD", 1.35, 103.82, 2.0),
    City("Johannesburg", "ZA", "ZAR", -26.20, 28.05, 2.0),
    City("Rome", "IT", "EUR", 41.90, 12.50, 3.0),
    City("Amsterdam", "NL", "EUR", 52.37, 4.90, 2.0),
    City("Seoul", "KR", "KRW", 37.57, 126.98, 3.0),
    City("Dubai", "AE", "AED", 25.20, 55.27, 2.0),
    City("Buenos Aires", "AR", "ARS", -34.60, -58.38, 2.0),
    City("Stockholm", "SE", "SEK", 59.33, 18.07, 2.0),
    City("Istanbul", "TR", "TRY", 41.01, 28.98, 2.0),
    City("Warsaw", "PL", "PLN", 52.23, 21.01, 2.0),
    City("Cairo", "EG", "EGP", 30.04, 31.24, 2.0),
    City("Los Angeles", "US", "USD", 34.05, -118.24, 6.0),
    City("Chicago", "US", "USD", 41.88, -87.63, 4.0),
    City("Manchester", "GB", "GBP", 53.48, -2.24, 2.0),
    City("Munich", "DE", "EUR", 48.14, 11.58, 2.0),
    City("Lyon", "FR", "EUR", 45.76, 4.84, 2.0),
    City("Osaka", "JP", "JPY", 34.69, 135.50, 3.0),
    City("Melbourne", "AU", "AUD", -37.81, 144.96, 2.0),
    City("Vancouver", "CA", "CAD", 49.28, -123.12, 2.0),
    City("Delhi", "IN", "INR", 28.70, 77.10, 3.0),
    City("Barcelona", "ES", "EUR", 41.39, 2.17, 2.0),
    City("Rio de Janeiro", "BR", "BRL", -22.91, -43.17, 2.0),
    City("Milan", "IT", "EUR", 45.46, 9.19, 2.0),
    City("Houston", "US", "USD", 29.76, -95.37, 3.0),
    City("Miami", "US", "USD", 25.76, -80.19, 2.0),
)
# A city needs enough terminals for its customers to have a neighbourhood of their own.
TERMINALS_PER_CITY = 40

CATEGORIES = (
    "grocery",
    "restaurant",
    "fuel",
    "retail",
    "health",
    "entertainment",
    "electronics",
    "travel",
    "online",
    "jewelry",
)
CATEGORY_WEIGHTS = np.array([0.25, 0.18, 0.10, 0.15, 0.06, 0.06, 0.05, 0.04, 0.08, 0.03])
# Typical ticket of a category relative to the customer's everyday purchase.
CATEGORY_AMOUNT_FACTOR = np.array([1.0, 0.7, 1.0, 1.3, 1.0, 0.8, 3.0, 4.0, 1.2, 4.0])
# Where fraudsters cash out: goods that resell and services that need no physical presence.
HIGH_VALUE_CATEGORIES = (6, 7, 8, 9)

USUAL_TERMINALS = 8
_usual_weights = 1.0 / np.arange(1, USUAL_TERMINALS + 1) ** 0.8
USUAL_TERMINAL_CDF = np.cumsum(_usual_weights) / _usual_weights.sum()
WANDER_PROBABILITY = 0.07  # a legit purchase at an unfamiliar terminal of the home city
LEGIT_BIG_PURCHASE_PROBABILITY = 0.002  # legit splurges keep "large" from meaning "fraud"
LOCAL_JITTER_DEGREES = 0.12  # ~13 km: terminals and homes scattered over a metropolitan area
MAX_TRIP_DAYS = 10
# Impossible travel lands this far away within two hours of a genuine purchase: > 1,500 km/h.
FAR_KM = 3000.0
WEEKEND_FACTOR, WEEKDAY_FACTOR = 1.15, 0.94

# Independent random streams, one per purpose, so changing one scenario's rate leaves the rest.
_WORLD, _LEGIT, _TRIPS, _LARGE, _TERMINAL_EVENTS, _TERMINAL_FLIPS = range(1, 7)
_CARD_EVENTS, _CARD_FRAUD, _CARD_TESTING, _TRAVEL = range(7, 11)
# Days before 1970 are negative; random seeds must not be.
_DAY_OFFSET = 1_000_000


def _seed(value: int) -> int:
    return value % (2**63)


def _rng(seed: int, day: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([_seed(seed), day + _DAY_OFFSET, purpose])


@dataclass(slots=True)
class _Rows:
    """Transactions as index arrays into the world (card, terminal) plus time, amount, scenario."""

    time_ms: np.ndarray
    card: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    scenario: np.ndarray

    @staticmethod
    def empty() -> _Rows:
        return _Rows(
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.int8),
        )

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(
            np.concatenate([p.time_ms for p in parts]),
            np.concatenate([p.card for p in parts]),
            np.concatenate([p.terminal for p in parts]),
            np.concatenate([p.amount for p in parts]),
            np.concatenate([p.scenario for p in parts]),
        )

    def take(self, index: np.ndarray) -> _Rows:
        return _Rows(
            self.time_ms[index],
            self.card[index],
            self.terminal[index],
            self.amount[index],
            self.scenario[index],
        )

    def __len__(self) -> int:
        return len(self.time_ms)


@dataclass
class _World:
    """Customers, cards, terminals and cities, as numpy arrays indexed by position."""

    city_country: np.ndarray
    city_tz_hours: np.ndarray
    city_terminal_start: np.ndarray
    city_terminal_count: np.ndarray
    city_high_value_start: np.ndarray
    city_high_value_count: np.ndarray
    high_value_terminals: np.ndarray
    foreign_cities: np.ndarray  # (cities, cities) bool: a different country
    far_cities: np.ndarray  # (cities, cities) bool: abroad and beyond IMPOSSIBLE_TRAVEL_KM
    customer_city: np.ndarray
    customer_rate: np.ndarray
    customer_base_amount: np.ndarray
    customer_amount_sigma: np.ndarray
    customer_hour_center: np.ndarray
    customer_hour_spread: np.ndarray
    customer_card_start: np.ndarray
    customer_card_count: np.ndarray
    customer_usual: np.ndarray  # (customers, USUAL_TERMINALS) terminal indices
    card_customer: np.ndarray
    terminal_city: np.ndarray
    terminal_category: np.ndarray
    terminal_lat: np.ndarray
    terminal_lon: np.ndarray
    strings: dict[str, Any] = field(default_factory=dict)  # pyarrow arrays, built lazily

    @property
    def customers(self) -> int:
        return len(self.customer_city)

    @property
    def cards(self) -> int:
        return len(self.card_customer)

    @property
    def terminals(self) -> int:
        return len(self.terminal_city)


def _build_world(config: SimulateConfig) -> _World:
    rng = np.random.default_rng([_seed(config.seed), _WORLD, config.customers, config.terminals])
    n_cities = max(1, min(len(CITIES), config.terminals // TERMINALS_PER_CITY))
    cities = CITIES[:n_cities]
    city_lat = np.array([c.lat for c in cities])
    city_lon = np.array([c.lon for c in cities])
    weights = np.array([c.weight for c in cities])
    weights /= weights.sum()
    countries = np.array([c.country for c in cities])

    # Terminals: at least one per city, the rest by city weight, sorted by (city, longitude) so
    # that a run of neighbouring indices is a neighbourhood.
    per_city = 1 + rng.multinomial(config.terminals - n_cities, weights)
    terminal_city = np.repeat(np.arange(n_cities), per_city)
    lat_scale = np.cos(np.radians(city_lat))
    terminal_lat = city_lat[terminal_city] + rng.normal(0, LOCAL_JITTER_DEGREES, config.terminals)
    terminal_lon = (
        city_lon[terminal_city]
        + rng.normal(0, LOCAL_JITTER_DEGREES, config.terminals) / (lat_scale[terminal_city])
    )
    order = np.lexsort((terminal_lon, terminal_city))
    terminal_lat = np.round(terminal_lat[order], 5)
    terminal_lon = np.round(terminal_lon[order], 5)
    terminal_category = rng.choice(len(CATEGORIES), size=config.terminals, p=CATEGORY_WEIGHTS)
    city_terminal_start = np.concatenate([[0], np.cumsum(per_city)[:-1]])

    high_value = np.isin(terminal_category, HIGH_VALUE_CATEGORIES)
    high_value_terminals = np.flatnonzero(high_value)
    city_high_value_count = np.bincount(terminal_city[high_value], minlength=n_cities)
    city_high_value_start = np.concatenate([[0], np.cumsum(city_high_value_count)[:-1]])

    n = config.customers
    customer_city = rng.choice(n_cities, size=n, p=weights)
    customer_lon = city_lon[customer_city] + rng.normal(0, LOCAL_JITTER_DEGREES, n) / lat_scale[customer_city]
    customer_usual = np.empty((n, USUAL_TERMINALS), dtype=np.int64)
    offsets = rng.integers(-1_000_000, 1_000_000, size=(n, USUAL_TERMINALS))
    for city in range(n_cities):
        members = np.flatnonzero(customer_city == city)
        start, count = int(city_terminal_start[city]), int(per_city[city])
        lons = terminal_lon[start : start + count]
        position = np.searchsorted(lons, customer_lon[members])
        reach = max(2, count // 25)
        local = position[:, None] + offsets[members] % (2 * reach + 1) - reach
        customer_usual[members] = start + np.clip(local, 0, count - 1)

    card_draw = rng.random(n)
    card_count = 1 + (card_draw > 0.6) + (card_draw > 0.9)
    card_start = np.concatenate([[0], np.cumsum(card_count)[:-1]])
    rate = config.daily_transactions * rng.gamma(2.0, 0.5, n)

    return _World(
        city_country=countries,
        city_tz_hours=np.round(city_lon / 15.0).astype(np.int64),
        city_terminal_start=city_terminal_start,
        city_terminal_count=per_city,
        city_high_value_start=city_high_value_start,
        city_high_value_count=city_high_value_count,
        high_value_terminals=high_value_terminals,
        foreign_cities=countries[:, None] != countries[None, :],
        far_cities=(countries[:, None] != countries[None, :])
        & (
            haversine_km_array(city_lat[:, None], city_lon[:, None], city_lat[None, :], city_lon[None, :])
            > FAR_KM
        ),
        customer_city=customer_city,
        customer_rate=np.clip(rate, 0.05, 12.0),
        customer_base_amount=rng.lognormal(np.log(35.0), 0.5, n),
        customer_amount_sigma=rng.uniform(0.3, 0.6, n),
        customer_hour_center=np.clip(rng.normal(13.5, 2.0, n), 8.5, 19.5),
        customer_hour_spread=rng.uniform(1.5, 3.5, n),
        customer_card_start=card_start,
        customer_card_count=card_count,
        customer_usual=customer_usual,
        card_customer=np.repeat(np.arange(n), card_count),
        terminal_city=terminal_city,
        terminal_category=terminal_category,
        terminal_lat=terminal_lat,
        terminal_lon=terminal_lon,
    )


def _world_strings(world: _World) -> dict[str, Any]:
    """Id and label strings as pyarrow arrays, so a chunk's string columns are one `take` each."""
    if not world.strings:
        import pyarrow as pa

        world.strings = {
            "customer_id": pa.array([f"cust-{i:06d}" for i in range(world.customers)], pa.string()),
            "card_id": pa.array([f"card-{i:07d}" for i in range(world.cards)], pa.string()),
            "terminal_id": pa.array([f"term-{i:06d}" for i in range(world.terminals)], pa.string()),
            "currency": pa.array([CITIES[c].currency for c in world.terminal_city.tolist()], pa.string()),
            "country": pa.array([CITIES[c].country for c in world.terminal_city.tolist()], pa.string()),
            "merchant_category": pa.array(CATEGORIES, pa.string()).take(pa.array(world.terminal_category)),
            "fraud_scenario": pa.array(("", *SCENARIOS), pa.string()),
        }
    return world.strings


class _Simulator:
    """Generates one local day at a time; caches the few scenario events that span days."""

    def __init__(self, config: SimulateConfig) -> None:
        self.config = config
        self.rates = config.scenarios
        self.world = _build_world(config)
        self._events: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    # -- scenario events that last several days ------------------------------------------------

    def _day_events(self, day: int, purpose: int) -> tuple[np.ndarray, ...]:
        key = (day, purpose)
        if key not in self._events:
            self._events[key] = self._draw_events(day, purpose)
        return self._events[key]

    def _draw_events(self, day: int, purpose: int) -> tuple[np.ndarray, ...]:
        world, rates = self.world, self.rates
        rng = _rng(self.config.seed, day, purpose)
        if purpose == _TERMINAL_EVENTS:
            count = rng.poisson(rates.compromised_terminals_per_day * world.terminals / 1000)
            return (rng.integers(world.terminals, size=count),)
        if purpose == _CARD_EVENTS:
            count = rng.poisson(rates.compromised_cards_per_day * world.customers / 1000)
            return (rng.integers(world.cards, size=count),)
        # Legit trips: a travel day, days abroad, a travel day back (no purchases while flying).
        count = rng.poisson(self.config.trips_per_day * world.customers / 1000)
        customers = rng.integers(world.customers, size=count)
        length = rng.integers(3, MAX_TRIP_DAYS + 1, size=count)
        destination = self._other_city(rng, world.customer_city[customers], foreign_share=0.7)
        return customers, length, destination

    def _forget_before(self, day: int) -> None:
        horizon = day - max(
            self.rates.terminal_compromise_days, self.rates.card_compromise_days, MAX_TRIP_DAYS
        )
        for key in [k for k in self._events if k[0] < horizon - 1]:
            del self._events[key]

    def _other_city(self, rng: np.random.Generator, city: np.ndarray, foreign_share: float) -> np.ndarray:
        """A random different city per entry: in another country with probability `foreign_share`."""
        world = self.world
        keys = rng.random((len(city), len(world.city_country)))
        want_foreign = rng.random(len(city)) < foreign_share
        return self._pick_city(keys, city, np.where(want_foreign[:, None], world.foreign_cities[city], True))

    def _far_city(self, rng: np.random.Generator, city: np.ndarray) -> np.ndarray:
        """A random city abroad and far away (or the farthest kind a small world has)."""
        world = self.world
        keys = rng.random((len(city), len(world.city_country)))
        far = world.far_cities[city]
        return self._pick_city(
            keys, city, np.where(far.any(axis=1)[:, None], far, world.foreign_cities[city])
        )

    @staticmethod
    def _pick_city(keys: np.ndarray, city: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        rows = np.arange(len(city))
        allowed = allowed.copy()
        allowed[rows, city] = False
        # Nothing qualifies: any other city, or the same one in a one-city world.
        empty = ~allowed.any(axis=1)
        allowed[empty] = True
        if allowed.shape[1] > 1:
            allowed[rows[empty], city[empty]] = False
        return np.argmax(np.where(allowed, keys, -1.0), axis=1)

    def _terminal_in(self, rng: np.random.Generator, city: np.ndarray, high_value: np.ndarray) -> np.ndarray:
        """A random terminal of each city; a high-value one where asked and the city has any."""
        world = self.world
        draw = rng.random(len(city))
        anywhere = world.city_terminal_start[city] + (draw * world.city_terminal_count[city]).astype(np.int64)
        hv_count = world.city_high_value_count[city]
        use_hv = high_value & (hv_count > 0)
        hv_position = world.city_high_value_start[city] + (draw * np.maximum(hv_count, 1)).astype(np.int64)
        hv_position = np.minimum(hv_position, max(len(world.high_value_terminals) - 1, 0))
        if len(world.high_value_terminals) == 0:
            return anywhere
        return np.where(use_hv, world.high_value_terminals[hv_position], anywhere)

    # -- one local day -------------------------------------------------------------------------

    def local_day(self, day: int) -> _Rows:
        """Every transaction whose customer-local date is `day` (days since 1970-01-01)."""
        self._forget_before(day)
        legit = self._legit(day)
        self._large_amounts(day, legit)
        self._compromised_terminals(day, legit)
        parts = [
            legit,
            self._compromised_cards(day),
            self._card_testing(day),
            self._impossible_travel(day, legit),
        ]
        return _Rows.concat(parts)

    def _trips(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        world = self.world
        destination = np.full(world.customers, -1, dtype=np.int64)
        travelling = np.zeros(world.customers, dtype=bool)
        for start in range(day - MAX_TRIP_DAYS + 1, day + 1):
            customers, length, city = self._day_events(start, _TRIPS)
            offset = day - start
            on_trip = offset < length
            in_transit = on_trip & ((offset == 0) | (offset == length - 1))
            abroad = on_trip & ~in_transit
            travelling[customers[in_transit]] = True
            destination[customers[abroad]] = city[abroad]
            # A later trip replaces an earlier one; a travel day overrides being abroad.
            travelling[customers[abroad]] = False
        destination[travelling] = -1
        return destination, travelling

    def _legit(self, day: int) -> _Rows:
        world, config = self.world, self.config
        rng = _rng(config.seed, day, _LEGIT)
        destination, travelling = self._trips(day)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        factor = WEEKEND_FACTOR if weekday >= 5 else WEEKDAY_FACTOR
        counts = rng.poisson(world.customer_rate * factor)
        counts[travelling] = 0
        customer = np.repeat(np.arange(world.customers), counts)
        n = len(customer)

        card_draw = rng.random(n)
        card_count = world.customer_card_count[customer]
        second = (card_count >= 2) & (card_draw > 0.65)
        third = (card_count >= 3) & (card_draw > 0.88)
        card = world.customer_card_start[customer] + second + third

        abroad_city = destination[customer]
        abroad = abroad_city >= 0
        city = np.where(abroad, abroad_city, world.customer_city[customer])
        hour = (
            world.customer_hour_center[customer]
            + world.customer_hour_spread[customer] * rng.standard_normal(n)
        ) % 24.0
        time_ms = (day * 24 - world.city_tz_hours[city]) * HOUR_MS + (hour * HOUR_MS).astype(np.int64)

        slot = np.searchsorted(USUAL_TERMINAL_CDF, rng.random(n))
        terminal = world.customer_usual[customer, np.minimum(slot, USUAL_TERMINALS - 1)]
        wander = rng.random(n) < WANDER_PROBABILITY
        elsewhere = self._terminal_in(rng, city, np.zeros(n, dtype=bool))
        terminal = np.where(wander | abroad, elsewhere, terminal)

        amount = (
            world.customer_base_amount[customer]
            * CATEGORY_AMOUNT_FACTOR[world.terminal_category[terminal]]
            * np.exp(world.customer_amount_sigma[customer] * rng.standard_normal(n))
        )
        splurge = rng.random(n) < LEGIT_BIG_PURCHASE_PROBABILITY
        amount[splurge] *= rng.uniform(3.0, 8.0, int(splurge.sum()))
        return _Rows(time_ms, card, terminal, amount, np.zeros(n, dtype=np.int8))

    def _large_amounts(self, day: int, rows: _Rows) -> None:
        """A stolen card's one big purchase at an unfamiliar high-value merchant, replacing a legit one."""
        rng = _rng(self.config.seed, day, _LARGE)
        world = self.world
        chosen = np.flatnonzero(rng.random(len(rows)) < self.rates.large_amount)
        city = world.terminal_city[rows.terminal[chosen]]
        terminal = self._terminal_in(rng, city, np.ones(len(chosen), dtype=bool))
        customer = world.card_customer[rows.card[chosen]]
        rows.terminal[chosen] = terminal
        rows.amount[chosen] = (
            world.customer_base_amount[customer]
            * CATEGORY_AMOUNT_FACTOR[world.terminal_category[terminal]]
            * rng.uniform(5.0, 15.0, len(chosen))
        )
        rows.scenario[chosen] = LARGE_AMOUNT

    def _compromised_terminals(self, day: int, rows: _Rows) -> None:
        """Terminals compromised in the last weeks defraud a share of every card that pays there."""
        rates = self.rates
        active = np.zeros(self.world.terminals, dtype=bool)
        for start in range(day - rates.terminal_compromise_days + 1, day + 1):
            active[self._day_events(start, _TERMINAL_EVENTS)[0]] = True
        rng = _rng(self.config.seed, day, _TERMINAL_FLIPS)
        draw = rng.random(len(rows))
        hit = active[rows.terminal] & (rows.scenario == 0) & (draw < rates.terminal_fraud_fraction)
        rows.scenario[hit] = COMPROMISED_TERMINAL

    def _compromised_cards(self, day: int) -> _Rows:
        """From the day after a card is compromised, a fraudster adds inflated purchases on it."""
        world, rates = self.world, self.rates
        cards = [
            self._day_events(start, _CARD_EVENTS)[0] for start in range(day - rates.card_compromise_days, day)
        ]
        active = np.concatenate(cards) if cards else np.empty(0, np.int64)
        rng = _rng(self.config.seed, day, _CARD_FRAUD)
        owner = world.card_customer[active]
        card_rate = np.maximum(world.customer_rate[owner] / world.customer_card_count[owner], 0.3)
        fraction = min(rates.card_fraud_fraction, 0.95)
        counts = rng.poisson(card_rate * fraction / (1.0 - fraction))
        card = np.repeat(active, counts)
        customer = world.card_customer[card]
        n = len(card)
        city = world.customer_city[customer]
        # The fraudster keeps their own hours, so these land at any local time, night included.
        time_ms = (day * 24 - world.city_tz_hours[city]) * HOUR_MS + rng.integers(0, DAY_MS, n)
        terminal = self._terminal_in(rng, city, rng.random(n) < 0.4)
        amount = (
            world.customer_base_amount[customer]
            * CATEGORY_AMOUNT_FACTOR[world.terminal_category[terminal]]
            * np.exp(world.customer_amount_sigma[customer] * rng.standard_normal(n))
            * rng.uniform(2.0, 5.0, n)
        )
        return _Rows(time_ms, card, terminal, amount, np.full(n, COMPROMISED_CARD, dtype=np.int8))

    def _card_testing(self, day: int) -> _Rows:
        """Bursts of tiny amounts at many merchants within minutes, sometimes followed by a big buy."""
        world = self.world
        rng = _rng(self.config.seed, day, _CARD_TESTING)
        bursts = rng.poisson(self.rates.card_testing_bursts_per_day * world.customers / 1000)
        card = rng.integers(world.cards, size=bursts)
        start = day * DAY_MS + rng.integers(0, DAY_MS, bursts)
        sizes = rng.integers(5, 21, bursts)
        burst = np.repeat(np.arange(bursts), sizes)
        gaps = 5_000 + rng.exponential(40_000.0, len(burst)).astype(np.int64)
        elapsed = np.cumsum(gaps)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        elapsed -= np.repeat(elapsed[first] if bursts else np.empty(0, np.int64), sizes)
        test_time = start[burst] + elapsed
        test_terminal = rng.integers(world.terminals, size=len(burst))
        test_amount = np.round(rng.uniform(0.5, 3.0, len(burst)), 2)

        cash_out = np.flatnonzero(rng.random(bursts) < 0.5)
        burst_end = test_time[first + sizes - 1] if bursts else np.empty(0, np.int64)
        owner = world.card_customer[card[cash_out]]
        big_time = burst_end[cash_out] + rng.integers(30 * MINUTE_MS, 6 * HOUR_MS, len(cash_out))
        big_terminal = self._terminal_in(rng, world.customer_city[owner], np.ones(len(cash_out), dtype=bool))
        big_amount = world.customer_base_amount[owner] * rng.uniform(4.0, 10.0, len(cash_out))

        n = len(burst) + len(cash_out)
        return _Rows(
            np.concatenate([test_time, big_time]),
            np.concatenate([card[burst], card[cash_out]]),
            np.concatenate([test_terminal, big_terminal]),
            np.concatenate([test_amount, big_amount]),
            np.full(n, CARD_TESTING, dtype=np.int8),
        )

    def _impossible_travel(self, day: int, legit: _Rows) -> _Rows:
        """Minutes to hours after a genuine purchase, the card pays in a city of another country."""
        world = self.world
        rng = _rng(self.config.seed, day, _TRAVEL)
        episodes = rng.poisson(self.rates.impossible_travel_per_day * world.customers / 1000)
        if len(legit) == 0 or episodes == 0:
            return _Rows.empty()
        anchor = rng.integers(len(legit), size=episodes)
        anchor_city = world.terminal_city[legit.terminal[anchor]]
        far_city = self._far_city(rng, anchor_city)
        sizes = rng.integers(1, 5, episodes)
        episode = np.repeat(np.arange(episodes), sizes)
        first_delay = rng.integers(10 * MINUTE_MS, 2 * HOUR_MS, episodes)
        gaps = rng.integers(5 * MINUTE_MS, 45 * MINUTE_MS, len(episode))
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gaps[first] = 0
        elapsed = np.cumsum(gaps)
        elapsed -= np.repeat(elapsed[first], sizes)
        time_ms = legit.time_ms[anchor][episode] + first_delay[episode] + elapsed
        card = legit.card[anchor][episode]
        terminal = self._terminal_in(rng, far_city[episode], rng.random(len(episode)) < 0.5)
        customer = world.card_customer[card]
        amount = (
            world.customer_base_amount[customer]
            * CATEGORY_AMOUNT_FACTOR[world.terminal_category[terminal]]
            * rng.uniform(1.0, 4.0, len(episode))
        )
        return _Rows(time_ms, card, terminal, amount, np.full(len(episode), IMPOSSIBLE_TRAVEL, dtype=np.int8))

    # -- UTC days ------------------------------------------------------------------------------

    def utc_days(self, first_day: int) -> Iterator[tuple[int, _Rows]]:
        """(day, rows of that UTC day sorted by time), endlessly from `first_day`."""
        # Local days spill up to 12 hours into the neighbouring UTC days, so UTC day D is complete
        # once local day D + 1 has been generated.
        pending = _Rows.concat([self.local_day(first_day - 1), self.local_day(first_day)])
        day = first_day
        while True:
            pending = _Rows.concat([pending, self.local_day(day + 1)])
            end = (day + 1) * DAY_MS
            done = pending.time_ms < end
            rows = pending.take(np.flatnonzero(done & (pending.time_ms >= day * DAY_MS)))
            pending = pending.take(np.flatnonzero(~done))
            # Stable sort keeps generation order as the tie-break between equal timestamps.
            rows = rows.take(np.argsort(rows.time_ms, kind="stable"))
            rows.amount = np.round(np.maximum(rows.amount, 0.01), 2)
            yield day, rows
            day += 1

    def table(self, day: int, rows: _Rows, start_ms: int | None = None) -> pyarrow.Table:
        """The canonical columns of one UTC day as an Arrow table (ids numbered within the day)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        world = self.world
        strings = _world_strings(world)
        numbers = pa.array(day * 10_000_000 + np.arange(len(rows), dtype=np.int64)).cast(pa.string())
        transaction_id = pc.binary_join_element_wise("tx", numbers, "")
        card = pa.array(rows.card)
        terminal = pa.array(rows.terminal)
        customer = pa.array(world.card_customer[rows.card])
        table = pa.table(
            {
                "transaction_id": transaction_id,
                "event_time_ms": pa.array(rows.time_ms, pa.int64()),
                "card_id": strings["card_id"].take(card),
                "customer_id": strings["customer_id"].take(customer),
                "terminal_id": strings["terminal_id"].take(terminal),
                "amount": pa.array(rows.amount, pa.float64()),
                "currency": strings["currency"].take(terminal),
                "merchant_category": strings["merchant_category"].take(terminal),
                "country": strings["country"].take(terminal),
                "lat": pa.array(world.terminal_lat[rows.terminal], pa.float64()),
                "lon": pa.array(world.terminal_lon[rows.terminal], pa.float64()),
                "label": pa.array((rows.scenario > 0).astype(np.int64), pa.int64()),
                "fraud_scenario": strings["fraud_scenario"].take(pa.array(rows.scenario)),
            }
        )
        if start_ms is not None and len(rows) and rows.time_ms[0] < start_ms:
            table = table.slice(int(np.searchsorted(rows.time_ms, start_ms)))
        return table


def parse_start(value: str) -> int:
    """Epoch ms of a `simulate.start_date` (a date is its UTC midnight; naive times are UTC)."""
    try:
        return iso_ms(value)
    except ValueError:
        raise ConfigError(f"simulate.start_date: not an ISO date or time: {value!r}") from None


def simulate_dataset(config: SimulateConfig) -> pandas.DataFrame:
    """The canonical frame of `config.days` simulated days, sorted by (event_time_ms, transaction_id)."""
    return _simulate_table(config).to_pandas()


def _simulate_table(config: SimulateConfig) -> pyarrow.Table:
    import pyarrow as pa

    start_ms = parse_start(config.start_date)
    simulator = _Simulator(config)
    tables = []
    for index, (day, rows) in enumerate(simulator.utc_days(start_ms // DAY_MS)):
        if index >= config.days:
            break
        tables.append(simulator.table(day, rows, start_ms if index == 0 else None))
    return pa.concat_tables(tables)


def stream_transactions(config: SimulateConfig, start_ms: int | None = None) -> Iterator[pandas.DataFrame]:
    """Endless canonical frames, one simulated UTC day each, from `start_ms` (default: start_date)."""
    start = parse_start(config.start_date) if start_ms is None else int(start_ms)
    simulator = _Simulator(config)
    first = True
    for day, rows in simulator.utc_days(start // DAY_MS):
        yield simulator.table(day, rows, start if first else None).to_pandas()
        first = False


def file_table(frame: pandas.DataFrame) -> pyarrow.Table:
    """The on-disk layout of a canonical frame: `timestamp` (UTC, ms) instead of event_time_ms."""
    import pyarrow as pa

    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"not a canonical frame: missing column(s) {', '.join(missing)}")
    extra = [c for c in frame.columns if c not in CANONICAL_COLUMNS]
    strings = set(TEXT_COLUMNS)
    columns: dict[str, pyarrow.Array] = {}
    for name in FILE_COLUMNS:
        if name == "timestamp":
            millis = pa.array(frame["event_time_ms"].to_numpy(np.int64), pa.int64())
            columns[name] = millis.cast(pa.timestamp("ms", tz="UTC"))
        elif name in strings:
            columns[name] = pa.array(frame[name], pa.string(), from_pandas=True)
        elif name == "label":
            columns[name] = pa.array(frame[name].to_numpy(np.int32), pa.int32())
        else:
            columns[name] = pa.array(frame[name].to_numpy(np.float64), pa.float64(), from_pandas=True)
    for name in extra:
        columns[name] = pa.array(frame[name].to_numpy(np.float64), pa.float64(), from_pandas=True)
    return pa.table(columns)


def write_dataset(frame: pandas.DataFrame, path: Path | str, format: Literal["parquet", "csv"]) -> Path:
    """Write a canonical frame in the `fraudkit` file layout; the same frame gives the same bytes."""
    return _write_table(file_table(frame), Path(path), format)


def _write_table(table: pyarrow.Table, path: Path, format: str) -> Path:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if format == "parquet":
            pq.write_table(table, path, compression="zstd")
        elif format == "csv":
            pa_csv.write_csv(table, path)
        else:
            raise ConfigError(f"simulate.format: must be parquet or csv, got {format!r}")
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


@dataclass
class SimulationSummary:
    """What `fraudkit simulate` wrote."""

    path: Path
    format: str
    rows: int
    frauds: int
    frauds_by_scenario: dict[str, int]
    start_ms: int
    end_ms: int
    customers: int
    terminals: int
    simulate_s: float
    write_s: float

    @property
    def fraud_rate(self) -> float:
        return self.frauds / self.rows if self.rows else 0.0


def simulate_to_file(config: SimulateConfig) -> SimulationSummary:
    """Simulate `config.days` days and write them to `config.out` in `config.format`."""
    import pyarrow.compute as pc

    started = time.perf_counter()
    table = _simulate_table(config)
    simulated = time.perf_counter()
    path = _write_table(_file_table_from_arrow(table), config.out, config.format)
    written = time.perf_counter()
    counts = pc.value_counts(table.column("fraud_scenario")).to_pylist()
    by_scenario = {name: 0 for name in SCENARIOS}
    for item in counts:
        if item["values"]:
            by_scenario[item["values"]] = int(item["counts"])
    times = table.column("event_time_ms")
    return SimulationSummary(
        path=path,
        format=config.format,
        rows=table.num_rows,
        frauds=int(pc.sum(table.column("label")).as_py() or 0),
        frauds_by_scenario=by_scenario,
        start_ms=int(pc.min(times).as_py() or 0),
        end_ms=int(pc.max(times).as_py() or 0),
        customers=config.customers,
        terminals=config.terminals,
        simulate_s=simulated - started,
        write_s=written - simulated,
    )


def _file_table_from_arrow(table: pyarrow.Table) -> pyarrow.Table:
    import pyarrow as pa

    timestamp = table.column("event_time_ms").cast(pa.timestamp("ms", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("event_time_ms"), "timestamp", timestamp)
    return table.set_column(
        table.schema.get_field_index("label"), "label", table.column("label").cast(pa.int32())
    )
