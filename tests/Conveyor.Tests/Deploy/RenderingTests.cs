using Conveyor.Storage;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Reports;
using Conveyor.Worker.Webhooks;
using MassTransit;

namespace Conveyor.Tests.Deploy;

public sealed class RenderingTests
{
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Overlay_renders_and_every_document_parses_strictly(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Assert.NotEmpty(rendered.Objects);
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Overlay_deploys_the_api_the_worker_and_the_migration_job(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "needs one Api Deployment, a worker Deployment and a migration Job", Problems());

        IEnumerable<string> Problems()
        {
            var components = rendered.Workloads.Select(w => (w.Kind, w.Component)).ToList();
            if (components.Count(c => c is ("Deployment", "api")) != 1)
            {
                yield return "expected exactly one Deployment labelled app.kubernetes.io/component=api";
            }

            if (!components.Contains(("Deployment", "worker")))
            {
                yield return "no Deployment labelled app.kubernetes.io/component=worker";
            }

            if (!components.Contains(("Job", "migrations")))
            {
                yield return "no Job labelled app.kubernetes.io/component=migrations";
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Migration_job_runs_migrate_with_the_worker_image(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var workerImages = rendered.DeploymentsOf("worker").SelectMany(d => d.Workload.Pod.Containers).Select(c => c.Image).ToHashSet();

        Overlays.AssertNone(rendered, "the migration Job must run `dotnet Conveyor.Worker.dll migrate` from the worker image", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var job in rendered.Workloads.Where(w => w is { Kind: "Job", Component: "migrations" }))
            {
                if (job.Pod.RestartPolicy is not ("Never" or "OnFailure"))
                {
                    yield return $"{job}: restartPolicy {job.Pod.RestartPolicy ?? "(unset)"}; a Job needs Never or OnFailure";
                }

                foreach (var container in job.Pod.Containers)
                {
                    var commandLine = (container.Command ?? []).Concat(container.Args ?? []).ToList();
                    if (!commandLine.Contains("migrate"))
                    {
                        yield return $"{job}/{container.Name}: runs [{string.Join(' ', commandLine)}], not the worker's migrate command";
                    }

                    if (!workerImages.Contains(container.Image))
                    {
                        yield return $"{job}/{container.Name}: image {container.Image} is not the worker's ({string.Join(", ", workerImages)})";
                    }

                    if (!rendered.EnvironmentOf(container).ContainsKey("ConnectionStrings__Conveyor"))
                    {
                        yield return $"{job}/{container.Name}: no ConnectionStrings__Conveyor";
                    }
                }
            }
        }
    }

    /// <summary>
    /// <c>migrate</c> lifts every statement limit (<see cref="StorageServiceCollectionExtensions.WithoutStatementLimitsAsync"/>):
    /// an index built CONCURRENTLY and stopped halfway is left invalid, and the next run drops it and
    /// starts over. A deadline on the Job (or its pod) is such a stop, taken again on every attempt.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Migration_job_has_no_deadline_that_stops_an_index_build_halfway(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "the migration Job must run until its migrations are applied", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var job in rendered.Jobs.Where(j => new Workload("Job", j.Metadata.Name, j.Spec.Template).Component == "migrations"))
            {
                if (job.Spec.ActiveDeadlineSeconds is { } jobDeadline)
                {
                    yield return $"Job/{job.Metadata.Name}: activeDeadlineSeconds {jobDeadline} stops an index build that takes longer, and every retry rebuilds it from the start";
                }

                if (job.Spec.Template.Spec.ActiveDeadlineSeconds is { } podDeadline)
                {
                    yield return $"Job/{job.Metadata.Name}: pod activeDeadlineSeconds {podDeadline} stops an index build that takes longer, and every retry rebuilds it from the start";
                }
            }
        }
    }

    [Fact]
    public void Prod_uses_keda_the_rabbitmq_operator_and_cloudnative_pg()
    {
        var prod = RenderedOverlay.Load("prod");

        Assert.True(prod.ScaledObjects.Any(), "overlays/prod renders no KEDA ScaledObject: include components/keda");
        Assert.True(prod.TriggerAuthentications.Any(), "overlays/prod renders no KEDA TriggerAuthentication: include components/keda");
        Assert.True(prod.RabbitmqClusters.Any(), "overlays/prod renders no RabbitmqCluster: include components/rabbitmq-operator");
        Assert.True(prod.CnpgClusters.Any(), "overlays/prod renders no CloudNativePG Cluster: include components/cloudnative-pg");
    }

    [Fact]
    public void Endpoint_discovery_finds_the_worker_consumer_definitions()
    {
        IConsumerDefinition[] definitions =
        [
            new ChargePaymentConsumerDefinition(),
            new DeliverWebhookConsumerDefinition(),
            new GenerateReportConsumerDefinition(),
        ];
        var declared = definitions.Select(d => d.GetEndpointName(KebabCaseEndpointNameFormatter.Instance)).ToHashSet();

        Assert.Superset(declared, WorkerEndpoints.Queues.ToHashSet());
    }
}
