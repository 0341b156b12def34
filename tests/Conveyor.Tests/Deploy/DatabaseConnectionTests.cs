using System.Data.Common;
using System.Globalization;
using k8s.Models;

namespace Conveyor.Tests.Deploy;

/// <summary>Connection pools are big enough for the handlers, and all of them together fit in PostgreSQL.</summary>
public sealed class DatabaseConnectionTests
{
    /// <summary>
    /// Beyond one connection per handler: a long job's lease heartbeat and progress writes beside the
    /// connection its work holds, job-status writes, the dispatcher's claim transaction, health checks.
    /// </summary>
    private const int PoolHeadroom = 3;

    /// <summary>Npgsql's default Maximum Pool Size.</summary>
    private const int NpgsqlDefaultPool = 100;

    /// <summary>PostgreSQL's default max_connections, and what CloudNativePG keeps for itself (superuser_reserved_connections, its instance manager).</summary>
    private const int PostgresDefaultMaxConnections = 100;
    private const int ReservedConnections = 10;

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Worker_pool_covers_every_handler_it_runs_at_once(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, $"the worker's Maximum Pool Size must be >= the sum of the ConcurrentMessageLimits + {PoolHeadroom}, or handlers wait for connections while holding messages", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.DeploymentsOf("worker").Select(d => d.Workload))
            {
                foreach (var container in workload.Pod.Containers)
                {
                    var configuration = AppConfiguration.Of(rendered, workload, container);
                    var handlers = WorkerEndpoints.All.Sum(e => configuration.Consumer(e.ConsumerName).ConcurrentMessageLimit);
                    var pool = PoolSize(configuration);
                    if (pool is null)
                    {
                        yield return $"{workload}/{container.Name}: the connection string sets no Maximum Pool Size (Npgsql's default is {NpgsqlDefaultPool})";
                    }
                    else if (pool < handlers + PoolHeadroom)
                    {
                        yield return $"{workload}/{container.Name}: Maximum Pool Size {pool} < {handlers} concurrent handlers + {PoolHeadroom}";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Peak_connections_fit_in_postgres_max_connections(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var maxConnections = rendered.CnpgClusters.Select(MaxConnections).DefaultIfEmpty(PostgresDefaultMaxConnections).Min();
        var pods = rendered.Workloads
            .Select(w => (Workload: w, Pods: PeakPods(rendered, w), Connections: w.Pod.Containers.Sum(c => ConnectionsOf(rendered, w, c))))
            .ToList();
        var total = pods.Sum(p => p.Pods * p.Connections);
        var breakdown = string.Join(" + ", pods.Select(p => $"{p.Workload} {p.Pods} x {p.Connections}"));

        Assert.True(
            total + ReservedConnections <= maxConnections,
            $"overlays/{overlay}: at peak (maximum replicas plus rolling-update surge) the pools may open {total} connections ({breakdown}); " +
            $"with {ReservedConnections} reserved that exceeds PostgreSQL max_connections {maxConnections}. Raise max_connections or lower pools or replicas.");
    }

    /// <summary>
    /// A pod whose node died leaves its sessions, and the row locks of any transaction it had open (an inbox
    /// batch's claimed jobs), on the server until TCP keepalive ends them: two hours with the kernel's
    /// defaults, while other pods' claims of those messages wait. Every cluster the overlays deploy probes
    /// idle peers soon enough to end such a session within five minutes.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void The_database_ends_a_vanished_pods_sessions_within_minutes(string overlay)
    {
        foreach (var cluster in RenderedOverlay.Load(overlay).CnpgClusters)
        {
            var idle = Parameter(cluster, "tcp_keepalives_idle");
            var interval = Parameter(cluster, "tcp_keepalives_interval");
            var count = Parameter(cluster, "tcp_keepalives_count");
            Assert.True(
                idle is > 0 && interval is > 0 && count is > 0 && idle + (interval * count) <= 300,
                $"overlays/{overlay}: {cluster.Metadata.Name} sets tcp_keepalives_idle {idle}, _interval {interval}, _count {count}; "
                + "all three must be set, and idle + interval x count at most 300 s");
        }
    }

    private static int? Parameter(CnpgCluster cluster, string name) =>
        cluster.Spec.TryGetValue("postgresql", out var postgresql) && postgresql is IDictionary<object, object> settings
        && settings.TryGetValue("parameters", out var parameters) && parameters is IDictionary<object, object> values
        && values.TryGetValue(name, out var text)
        && int.TryParse(Convert.ToString(text, CultureInfo.InvariantCulture), CultureInfo.InvariantCulture, out var value)
            ? value
            : null;

    /// <summary>
    /// The pool, plus a worker's unpooled sessions (the one holding its webhook origin slots and the redelivery
    /// dispatcher's LISTEN connection) or the Api's (its cancels and run-nows, <see cref="Conveyor.Api.ApiApp.MaxRowLockSessions"/>).
    /// </summary>
    private static int ConnectionsOf(RenderedOverlay rendered, Workload workload, V1Container container)
    {
        var configuration = AppConfiguration.Of(rendered, workload, container);
        var unpooled = workload.Component switch
        {
            "worker" => 1 + (configuration.Dispatcher.DispatcherEnabled ? 1 : 0),
            "api" => Conveyor.Api.ApiApp.MaxRowLockSessions,
            _ => 0,
        };
        return (PoolSize(configuration) ?? NpgsqlDefaultPool) + unpooled;
    }

    private static int? PoolSize(AppConfiguration configuration)
    {
        var builder = new DbConnectionStringBuilder { ConnectionString = configuration["ConnectionStrings:Conveyor"] ?? "" };
        return builder.TryGetValue("Maximum Pool Size", out var value) || builder.TryGetValue("Max Pool Size", out value)
            ? int.TryParse(Convert.ToString(value, CultureInfo.InvariantCulture), CultureInfo.InvariantCulture, out var size) ? size : null
            : null;
    }

    /// <summary>The most pods a workload can run at once: KEDA's maximum or the replicas, plus the rollout's surge.</summary>
    private static int PeakPods(RenderedOverlay rendered, Workload workload)
    {
        if (workload.Kind == "Job")
        {
            return 1;
        }

        var deployment = rendered.Deployments.Single(d => d.Metadata.Name == workload.Name);
        var scaled = rendered.ScaledObjects.FirstOrDefault(s => s.Spec.ScaleTargetRef.Name == workload.Name);
        var replicas = scaled?.Spec.MaxReplicaCount ?? (scaled is null ? deployment.Spec.Replicas ?? 1 : 100);
        return replicas + Surge(deployment.Spec.Strategy?.RollingUpdate?.MaxSurge, replicas);
    }

    private static int Surge(IntOrString? maxSurge, int replicas)
    {
        var value = maxSurge?.Value ?? "25%";
        return value.EndsWith('%')
            ? (int)Math.Ceiling(replicas * int.Parse(value[..^1], CultureInfo.InvariantCulture) / 100.0)
            : int.Parse(value, CultureInfo.InvariantCulture);
    }

    private static int MaxConnections(CnpgCluster cluster) => Parameter(cluster, "max_connections") ?? PostgresDefaultMaxConnections;
}
