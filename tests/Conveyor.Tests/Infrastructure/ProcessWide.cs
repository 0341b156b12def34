using System.Diagnostics.Metrics;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// What every host in this process shares, whichever lane started it: a <see cref="MeterListener"/> that
/// does not keep to one host's meters (<c>Meter.Scope</c>), an OpenTelemetry exporter and so each host's /metrics (OpenTelemetry
/// listens to meters by name, not by host). A test that reads them would count other lanes' jobs,
/// so it must run in <see cref="AloneCollection"/>; these guards fail it at once, naming the fix, when it
/// does not, instead of letting it fail now and then in a full run.
/// </summary>
public static class ProcessWide
{
    /// <summary>Fails unless the test on the call stack runs in <see cref="AloneCollection"/>.</summary>
    /// <param name="what">What the test observes, for the message.</param>
    public static void Observe(string what)
    {
        var test = CallingTest.Class()
            ?? throw new InvalidOperationException($"{what} was observed outside a test method's call: call it from the test, so its collection can be checked");
        var collection = test.GetCustomAttributesData()
            .Where(attribute => attribute.AttributeType == typeof(CollectionAttribute))
            .Select(attribute => attribute.ConstructorArguments[0].Value as string)
            .FirstOrDefault();
        if (collection != AloneCollection.Name)
        {
            throw new InvalidOperationException(
                $"{test.Name} observes {what}, which every host in this process shares: other lanes' jobs would count too. "
                + $"Mark it [Collection(AloneCollection.Name)] (it is in {(collection is null ? "no collection" : $"\"{collection}\"")}).");
        }
    }

    /// <summary>A new <see cref="MeterListener"/>, for a test in <see cref="AloneCollection"/>.</summary>
    public static MeterListener Listener()
    {
        Observe("a MeterListener");
        return new MeterListener();
    }

    /// <summary>
    /// For an in-process host's client: a request for its /metrics is an observation of the process
    /// (<see cref="Observe"/>). A host started as a process of its own has metrics of its own.
    /// </summary>
    public sealed class MetricsGuard() : DelegatingHandler(new SocketsHttpHandler())
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            if (request.RequestUri?.AbsolutePath == "/metrics")
            {
                Observe("an in-process host's /metrics");
            }

            return base.SendAsync(request, cancellationToken);
        }
    }
}
