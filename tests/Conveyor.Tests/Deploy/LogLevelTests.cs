using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// The shipped log levels keep the steady traffic out of the logs: HttpClient's four lines per
/// request (the Api polls RabbitMQ's management API every second; the worker calls the payment
/// gateway and webhook receivers for every job) only from Warning up, while Conveyor's own
/// Information lines stay. Checked for the appsettings alone (<c>scripts/run.sh</c>) and for every
/// container of every overlay (appsettings plus its environment).
/// </summary>
public sealed class LogLevelTests
{
    private static readonly string[] PerRequestCategories =
    [
        "System.Net.Http.HttpClient.conveyor-broker-alarms.LogicalHandler",
        "System.Net.Http.HttpClient.conveyor-broker-alarms.ClientHandler",
        "System.Net.Http.HttpClient.conveyor-dashboard-overview.LogicalHandler",
        "System.Net.Http.HttpClient.RabbitManagementClient.LogicalHandler",
        "System.Net.Http.HttpClient.IPaymentGateway.ClientHandler",
        "System.Net.Http.HttpClient.WebhookSender.LogicalHandler",
    ];

    private const string OwnCategory = "Conveyor.Worker.Redelivery.RedeliveryDispatcher";

    [Theory]
    [InlineData("Api")]
    [InlineData("Worker")]
    public void Appsettings_log_no_line_per_outgoing_request(string project)
    {
        var problems = Problems(project, AppConfiguration.OfProject(project)).ToList();
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Overlays_log_no_line_per_outgoing_request(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        Overlays.AssertNone(rendered, "HttpClient logs a line per request at Information; keep System.Net.Http.HttpClient at Warning", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads.Where(w => w.Component is "api" or "worker"))
            {
                foreach (var container in workload.Pod.Containers)
                {
                    foreach (var problem in LogLevelTests.Problems($"{workload}/{container.Name}", AppConfiguration.Of(rendered, workload, container)))
                    {
                        yield return problem;
                    }
                }
            }
        }
    }

    private static IEnumerable<string> Problems(string where, AppConfiguration configuration)
    {
        using var factory = LoggerFactory.Create(logging => logging.AddConfiguration(configuration.Logging).AddProvider(new EveryLevel()));
        foreach (var category in PerRequestCategories)
        {
            var logger = factory.CreateLogger(category);
            if (logger.IsEnabled(LogLevel.Information))
            {
                yield return $"{where}: {category} logs at Information";
            }

            if (!logger.IsEnabled(LogLevel.Warning))
            {
                yield return $"{where}: {category} drops warnings";
            }
        }

        if (!factory.CreateLogger(OwnCategory).IsEnabled(LogLevel.Information))
        {
            yield return $"{where}: {OwnCategory} drops Information";
        }
    }

    /// <summary>A provider that takes every level, so that only the configured filters decide.</summary>
    private sealed class EveryLevel : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Logger();

        public void Dispose()
        {
        }

        private sealed class Logger : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
            }
        }
    }
}
