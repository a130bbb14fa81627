"""Instance and service counts of a set that changes instance by instance, for the
``peering_{imported,exported}_{instances,services}`` gauges: recounting the whole set after
every change cost more than the change itself at 100k instances."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from agent.model import ServiceInstance


class ServiceCounts:
    """Instances per service name; its length is the number of services with any."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._per_service = Counter(names)

    def add(self, name: str) -> None:
        self._per_service[name] += 1

    def remove(self, name: str) -> None:
        self._per_service[name] -= 1
        if self._per_service[name] <= 0:
            del self._per_service[name]

    def __len__(self) -> int:
        return len(self._per_service)


class ExportedCounts:
    """The exporter's side: feed rows carry no service name for a removal, so it keeps
    which service each exported key belongs to (the importer has its instances at hand)."""

    def __init__(self, view: Mapping[str, ServiceInstance] | None = None) -> None:
        self._service_of: dict[str, str] = {}
        self._services = ServiceCounts()
        for key, instance in (view or {}).items():
            self.put(key, instance)

    def put(self, key: str, instance: ServiceInstance | None) -> None:
        """``key`` now holds ``instance`` (None: removed)."""
        old = self._service_of.pop(key, None)
        if old is not None:
            self._services.remove(old)
        if instance is not None:
            self._service_of[key] = instance.Name
            self._services.add(instance.Name)

    @property
    def instances(self) -> int:
        return len(self._service_of)

    @property
    def services(self) -> int:
        return len(self._services)
