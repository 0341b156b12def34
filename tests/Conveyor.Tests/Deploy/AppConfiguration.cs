using Conveyor.ServiceDefaults;
using Conveyor.Worker.Hosting;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Redelivery;
using k8s.Models;
using Microsoft.Extensions.Configuration;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// The configuration a container's process will see, built as the hosts build it: the project's
/// appsettings.json, then environment variables (<c>__</c> for <c>:</c>). Secret values are stand-ins.
/// </summary>
public sealed class AppConfiguration
{
    private readonly IConfiguration _configuration;

    private AppConfiguration(IConfiguration configuration) => _configuration = configuration;

    public string? this[string key] => _configuration[key];

    public static AppConfiguration Of(RenderedOverlay overlay, Workload workload, V1Container container)
    {
        var project = workload.Component == "api" ? "Api" : "Worker";
        var values = overlay.EnvironmentOf(container)
            .ToDictionary(e => e.Key.Replace("__", ":", StringComparison.Ordinal), e => (string?)e.Value.Text, StringComparer.OrdinalIgnoreCase);
        var configuration = new ConfigurationBuilder()
            .AddJsonFile(RepositoryRoot.Combine("src", project, "appsettings.json"), optional: false)
            .AddInMemoryCollection(values)
            .Build();
        return new AppConfiguration(configuration);
    }

    /// <summary>A project's appsettings.json alone: what <c>scripts/run.sh</c> runs with.</summary>
    public static AppConfiguration OfProject(string project) =>
        new(new ConfigurationBuilder().AddJsonFile(RepositoryRoot.Combine("src", project, "appsettings.json"), optional: false).Build());

    /// <summary>The <c>Logging</c> section, as the hosts hand it to their logger factory.</summary>
    public IConfiguration Logging => _configuration.GetSection("Logging");

    public ShutdownOptions Shutdown =>
        _configuration.GetSection(ShutdownOptions.SectionName).Get<ShutdownOptions>() ?? new ShutdownOptions();

    public DispatcherOptions Dispatcher =>
        _configuration.GetSection(DispatcherOptions.SectionName).Get<DispatcherOptions>() ?? new DispatcherOptions();

    /// <summary>The options class bound to <paramref name="section"/> (its defaults where the section is absent).</summary>
    public T Section<T>(string section)
        where T : new() =>
        _configuration.GetSection(section).Get<T>() ?? new T();

    /// <summary>
    /// The broker's consumer-timeout settings; the rest of the section keeps its defaults (its port comes
    /// from a Secret, whose stand-in is no number).
    /// </summary>
    public RabbitMqOptions BrokerTimeouts
    {
        get
        {
            var defaults = new RabbitMqOptions();
            return new RabbitMqOptions
            {
                ConsumerTimeoutSeconds = _configuration.GetValue($"{RabbitMqOptions.SectionName}:{nameof(RabbitMqOptions.ConsumerTimeoutSeconds)}", defaults.ConsumerTimeoutSeconds),
                MaxRetryHoldPercent = _configuration.GetValue($"{RabbitMqOptions.SectionName}:{nameof(RabbitMqOptions.MaxRetryHoldPercent)}", defaults.MaxRetryHoldPercent),
            };
        }
    }

    public ConsumerEndpointOptions Consumer(string consumerName) =>
        _configuration.GetSection($"{ConsumerEndpointOptions.SectionName}:{consumerName}").Get<ConsumerEndpointOptions>()
        ?? new ConsumerEndpointOptions();

    /// <summary>The ports in <c>Urls</c> (<c>;</c>-separated, as ASP.NET Core reads it).</summary>
    public IReadOnlyList<int> UrlPorts =>
        Urls.Select(url => url.LastIndexOf(':') is var colon and > 0 && int.TryParse(url[(colon + 1)..].TrimEnd('/'), out var port) ? port : -1)
            .ToList();

    /// <summary>The addresses in <c>Urls</c>, each as given.</summary>
    public IReadOnlyList<string> Urls =>
        (_configuration["Urls"] ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
